package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/del-share/del/transfer"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// newProgress returns a progress display for w: a bar with rate and ETA on a
// terminal, a plain line about once a second otherwise, nothing when quiet.
func newProgress(w io.Writer, verb string, quiet bool) transfer.Progress {
	if quiet {
		return nil
	}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return &barProgress{w: w, verb: verb}
	}
	return &lineProgress{w: w, verb: verb, now: time.Now}
}

// barProgress draws one bar for the whole transfer.
type barProgress struct {
	w    io.Writer
	verb string
	bar  *progressbar.ProgressBar
}

func (p *barProgress) Begin(files int, bytes int64) {
	p.bar = progressbar.NewOptions64(bytes,
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionSetDescription(fmt.Sprintf("%s %d file(s)", p.verb, files)),
		progressbar.OptionShowBytes(true),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetWidth(30),
		progressbar.OptionShowCount(),
		progressbar.OptionFullWidth(),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(p.w) }),
	)
}

func (p *barProgress) FileBegin(path string, size, offset int64) {
	if offset > 0 {
		p.bar.Describe(fmt.Sprintf("%s %s (resumed at %s)", p.verb, path, transfer.FormatBytes(offset)))
	} else {
		p.bar.Describe(fmt.Sprintf("%s %s", p.verb, path))
	}
}

func (p *barProgress) Advance(n int64) { p.bar.Add64(n) }

func (p *barProgress) FileEnd(path string, err error) {
	if err != nil {
		p.bar.Clear()
		fmt.Fprintf(p.w, "\n%s: %v\n", path, err)
	}
}

func (p *barProgress) End() {
	if p.bar != nil {
		p.bar.Finish()
	}
}

// lineProgress prints "progress" lines for logs and pipes.
type lineProgress struct {
	w          io.Writer
	verb       string
	now        func() time.Time
	total      int64
	done       int64
	start      time.Time
	lastPrint  time.Time
	files, cur int
}

func (p *lineProgress) Begin(files int, bytes int64) {
	p.total, p.files, p.start, p.lastPrint = bytes, files, p.now(), p.now()
}

func (p *lineProgress) FileBegin(path string, size, offset int64) {
	p.cur++
	if offset > 0 {
		fmt.Fprintf(p.w, "%s %s: resuming at %s\n", p.verb, path, transfer.FormatBytes(offset))
	}
}

func (p *lineProgress) Advance(n int64) {
	p.done += n
	if now := p.now(); now.Sub(p.lastPrint) >= time.Second {
		p.lastPrint = now
		p.print(now)
	}
}

func (p *lineProgress) print(now time.Time) {
	el := now.Sub(p.start).Seconds()
	rate := float64(p.done) / max(el, 1e-9)
	pct := 100.0
	if p.total > 0 {
		pct = 100 * float64(p.done) / float64(p.total)
	}
	eta := "?"
	if rate > 0 {
		eta = time.Duration(float64(p.total-p.done) / rate * float64(time.Second)).Round(time.Second).String()
	}
	fmt.Fprintf(p.w, "progress %s/%s %.0f%% %s/s eta %s file %d/%d\n",
		transfer.FormatBytes(p.done), transfer.FormatBytes(p.total), pct, transfer.FormatBytes(int64(rate)), eta, p.cur, p.files)
}

func (p *lineProgress) FileEnd(path string, err error) {
	if err != nil {
		fmt.Fprintf(p.w, "%s: %v\n", path, err)
	}
}

func (p *lineProgress) End() {}
