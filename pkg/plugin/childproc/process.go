// Package childproc runs a component process — a stepflow plugin's
// component server, a grpc plugin's SDK worker — in its own process
// group, its output drained into the log.
//
// The process gets the parent's own os.Pipe pipes (not exec.Cmd's
// StdoutPipe): Wait must neither wait for the drains nor close the read
// ends under them, since a grandchild may still hold the write ends after
// the process died, and the death must be seen at once. Signals go to
// the whole group, so Stop also ends what the process spawned; the read
// ends are closed once the drains saw EOF or a bounded wait passed.
package childproc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/protocol"
)

// Limits of the output drains.
const (
	// MaxLogLine is the longest output line logged whole; longer lines
	// are logged truncated.
	MaxLogLine = 64 << 10
	// TailLines is how many output lines Tail keeps for crash reports.
	TailLines = 20
	// DrainWait bounds the wait for the drains after the process ended
	// (a grandchild may still hold a pipe); then the read ends are
	// closed.
	DrainWait = 2 * time.Second
)

// ErrEmptyCommand is returned by ResolveCommand (and Start) for an empty
// command.
var ErrEmptyCommand = errors.New("empty command")

// ResolveCommand finds the executable like `which`: a name without '/'
// on the PATH, a name with '/' relative to dir. It must be a regular,
// executable file.
func ResolveCommand(command, dir string) (string, error) {
	if command == "" {
		return "", ErrEmptyCommand
	}
	if !strings.Contains(command, "/") {
		p, err := exec.LookPath(command)
		if err != nil && !errors.Is(err, exec.ErrDot) {
			return "", fmt.Errorf("command %q: %w", command, err)
		}
		if !filepath.IsAbs(p) {
			if p, err = filepath.Abs(p); err != nil {
				return "", fmt.Errorf("command %q: %w", command, err)
			}
		}
		return p, nil
	}
	p := command
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	st, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("command %q: %w", command, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("command %q: %s is not a regular file", command, p)
	}
	if st.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("command %q: %s: %w", command, p, fs.ErrPermission)
	}
	return p, nil
}

// Drain says how an output stream is drained into the log: each line is
// logged at info level as Msg with the field "line".
type Drain struct {
	// Msg is the log message of each line, e.g. "worker stderr".
	Msg string
	// Tail keeps the stream's lines for Tail.
	Tail bool
	// First, when set, is offered each line until it returns true; the
	// lines it took are not logged (a port announcement).
	First func(line string) bool
}

// Spec is what Start starts.
type Spec struct {
	// Command is resolved with ResolveCommand against Dir and is the
	// child's argv[0]; Args follow it.
	Command string
	Args    []string
	// Env is the child's whole environment (nil: empty; never the
	// parent's).
	Env []string
	// Dir is the working directory.
	Dir string
	// Name names the process in log messages ("worker", "component
	// server").
	Name string
	// Stdin gives the child a stdin pipe (Pipes.Stdin); else /dev/null.
	Stdin bool
	// StdoutSize > 0 raises the stdout pipe to that size.
	StdoutSize int
	// Stdout drains stdout into the log; nil hands its read end to the
	// caller (Pipes.Stdout).
	Stdout *Drain
	// Stderr drains stderr into the log.
	Stderr Drain
	// Log is the logger; lines and warnings carry the field "pid".
	Log *zap.Logger
}

// Pipes are the parent's ends of a started process's pipes that Start
// hands to the caller.
type Pipes struct {
	// Stdout is stdout's read end unless Spec.Stdout drains it. Stop and
	// CloseReadEnds close it.
	Stdout *os.File
	// Stdin is stdin's write end when Spec.Stdin; the caller closes it.
	Stdin io.WriteCloser
}

// Process is a started component process in its own process group.
type Process struct {
	cmd  *exec.Cmd
	pid  int
	name string
	log  *zap.Logger

	exited  chan struct{} // closed once cmd.Wait returned
	waitErr error         // valid after exited

	// readEnds are the parent's read ends of stdout and stderr, closed
	// after the drains.
	readEnds  []*os.File
	drains    sync.WaitGroup
	closeOnce sync.Once

	tailMu sync.Mutex
	tail   []string

	stopOnce sync.Once
}

// Start starts spec.Command in its own process group with stdout and
// stderr on pipes, and the drains of the streams spec drains.
func Start(spec Spec) (*Process, Pipes, error) {
	path, err := ResolveCommand(spec.Command, spec.Dir)
	if err != nil {
		return nil, Pipes{}, err
	}
	env := spec.Env
	if env == nil {
		env = []string{} // non-nil: exec.Cmd would inherit everything
	}
	cmd := &exec.Cmd{
		Path:        path,
		Args:        append([]string{spec.Command}, spec.Args...),
		Env:         env,
		Dir:         spec.Dir,
		SysProcAttr: childAttr(),
	}

	var closeOnErr, childEnds []*os.File
	fail := func(err error) (*Process, Pipes, error) {
		for _, f := range closeOnErr {
			_ = f.Close()
		}
		return nil, Pipes{}, err
	}
	pipe := func() (*os.File, *os.File, error) {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, nil, fmt.Errorf("pipe: %w", err)
		}
		closeOnErr = append(closeOnErr, r, w)
		return r, w, nil
	}
	outR, outW, err := pipe()
	if err != nil {
		return fail(err)
	}
	if spec.StdoutSize > 0 {
		got, err := protocol.SetPipeSize(outR, spec.StdoutSize)
		if err != nil {
			spec.Log.Warn("could not raise the stdout pipe size", zap.Int("wanted", spec.StdoutSize), zap.Int("size", got), zap.Error(err))
		} else {
			spec.Log.Info("stdout pipe size", zap.Int("bytes", got))
		}
	}
	errR, errW, err := pipe()
	if err != nil {
		return fail(err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	childEnds = append(childEnds, outW, errW)
	var ps Pipes
	if spec.Stdin {
		inR, inW, err := pipe()
		if err != nil {
			return fail(err)
		}
		cmd.Stdin = inR
		childEnds = append(childEnds, inR)
		ps.Stdin = inW
	}
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("start %s: %w", path, err))
	}
	for _, f := range childEnds {
		_ = f.Close()
	}
	pid := cmd.Process.Pid
	pr := &Process{cmd: cmd, pid: pid, name: spec.Name, log: spec.Log.With(zap.Int("pid", pid)),
		exited: make(chan struct{}), readEnds: []*os.File{outR, errR}}
	go func() {
		pr.waitErr = cmd.Wait()
		close(pr.exited)
	}()
	if spec.Stdout != nil {
		pr.drain(outR, *spec.Stdout)
	} else {
		ps.Stdout = outR
	}
	pr.drain(errR, spec.Stderr)
	return pr, ps, nil
}

// drain logs r's lines until EOF, as d says.
func (pr *Process) drain(r io.Reader, d Drain) {
	pr.drains.Add(1)
	go func() {
		defer pr.drains.Done()
		first := d.First
		readLines(r, func(line string) {
			if first != nil && first(line) {
				first = nil
				return
			}
			if d.Tail {
				pr.tailMu.Lock()
				if len(pr.tail) == TailLines {
					pr.tail = append(pr.tail[:0], pr.tail[1:]...)
				}
				pr.tail = append(pr.tail, line)
				pr.tailMu.Unlock()
			}
			pr.log.Info(d.Msg, zap.String("line", line))
		})
	}()
}

// Pid returns the process id (also the process group id).
func (pr *Process) Pid() int { return pr.pid }

// Exited is closed once the process exited and was reaped.
func (pr *Process) Exited() <-chan struct{} { return pr.exited }

// Err returns the wait error (nil for exit status 0); valid once Exited
// is closed.
func (pr *Process) Err() error { return pr.waitErr }

// Tail returns the last TailLines lines of the streams drained with
// Drain.Tail.
func (pr *Process) Tail() []string {
	pr.tailMu.Lock()
	defer pr.tailMu.Unlock()
	return append([]string(nil), pr.tail...)
}

// Signal sends sig to the process group; a group that is gone is not an
// error.
func (pr *Process) Signal(sig syscall.Signal) {
	if err := syscall.Kill(-pr.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		pr.log.Warn("signal process group", zap.String("signal", sig.String()), zap.Error(err))
	}
}

// Stop ends the process group: SIGTERM and up to grace for the exit when
// grace > 0, then SIGKILL (which also reaches grandchildren left in the
// group); it waits for the process and then CloseReadEnds(DrainWait). It
// is idempotent and safe to call after the process exited by itself.
func (pr *Process) Stop(grace time.Duration) {
	pr.stopOnce.Do(func() {
		select {
		case <-pr.exited:
		default:
			if grace > 0 {
				pr.Signal(syscall.SIGTERM)
				t := time.NewTimer(grace)
				select {
				case <-pr.exited:
				case <-t.C:
					pr.log.Warn(pr.name+" ignored SIGTERM; killing it", zap.Duration("grace", grace))
				}
				t.Stop()
			}
		}
		pr.Signal(syscall.SIGKILL)
		<-pr.exited
		pr.CloseReadEnds(DrainWait)
	})
}

// CloseReadEnds waits up to d for the drains to see EOF (the last lines
// of a crash), then closes the read ends (which ends the drains and
// whatever reads Pipes.Stdout) and waits for the drains. Only the first
// call does so; the others wait for it.
func (pr *Process) CloseReadEnds(d time.Duration) {
	pr.closeOnce.Do(func() {
		done := make(chan struct{})
		go func() {
			pr.drains.Wait()
			close(done)
		}()
		t := time.NewTimer(d)
		select {
		case <-done:
		case <-t.C:
		}
		t.Stop()
		for _, f := range pr.readEnds {
			_ = f.Close()
		}
		<-done
	})
}

// readLines calls fn with each line of r (without the line end) until
// EOF or an error. Lines longer than MaxLogLine are truncated.
func readLines(r io.Reader, fn func(line string)) {
	br := bufio.NewReaderSize(r, 32<<10)
	var buf []byte
	dropped := 0
	for {
		chunk, err := br.ReadSlice('\n')
		if err == nil {
			chunk = chunk[:len(chunk)-1] // the '\n'
		}
		if room := MaxLogLine - len(buf); len(chunk) <= room {
			buf = append(buf, chunk...)
		} else {
			buf = append(buf, chunk[:room]...)
			dropped += len(chunk) - room
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == nil || len(buf) > 0 || dropped > 0 {
			line := string(bytes.TrimSuffix(buf, []byte("\r")))
			if dropped > 0 {
				line = fmt.Sprintf("%s… (%d more bytes)", line, dropped)
			}
			fn(line)
		}
		buf, dropped = buf[:0], 0
		if err != nil {
			return
		}
	}
}
