package stepflow

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

	"github.com/stepflow-go/stepflow/pkg/config"
)

// Limits of the output drain.
const (
	// maxLogLine is the longest stdout/stderr line logged whole; longer
	// lines are logged truncated.
	maxLogLine = 64 << 10
	// tailLines is how many stderr lines are kept for crash reports.
	tailLines = 20
	// drainWait bounds the wait for the drain goroutines after the
	// process ended (a grandchild may still hold a pipe); then the read
	// ends are closed.
	drainWait = 2 * time.Second
)

// resolveCommand finds the executable like `which`: a name without '/'
// on the runtime's PATH, a name with '/' relative to dir. It must be a
// regular, executable file.
func resolveCommand(command, dir string) (string, error) {
	if command == "" {
		return "", fmt.Errorf("%w: empty command", ErrConfig)
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

// process is one running server process in its own process group, with
// goroutines draining its output into the log.
type process struct {
	cmd *exec.Cmd
	pid int
	log *zap.Logger

	exited  chan struct{} // closed once cmd.Wait returned
	waitErr error         // valid after exited

	// readEnds are the parent's read ends of the child's pipes that the
	// drains (or the stdio transport) read; closed after the drains.
	readEnds []*os.File
	drains   sync.WaitGroup

	tailMu sync.Mutex
	tail   []string // last stderr lines

	stopOnce sync.Once
}

// pipes are the parent's ends of a started process's pipes.
type pipes struct {
	stdout *os.File       // read end
	stdin  io.WriteCloser // write end; nil unless requested
}

// startProcess starts cfg.Command with cfg.Args in dir with the
// environment env (config.ProcessEnv: the base variables and cfg.Env,
// never the worker's whole environment), in its own process group.
// stdout and stderr are pipes; stdin is a pipe when withStdin, else
// /dev/null. stdoutSize > 0 raises the stdout pipe to that size first.
func startProcess(cfg *config.StepflowPlugin, env []string, dir string, withStdin bool, stdoutSize int, log *zap.Logger) (*process, pipes, error) {
	path, err := resolveCommand(cfg.Command, dir)
	if err != nil {
		return nil, pipes{}, err
	}
	if env == nil {
		env = []string{} // non-nil: exec.Cmd would inherit everything
	}
	cmd := &exec.Cmd{
		Path:        path,
		Args:        append([]string{cfg.Command}, cfg.Args...),
		Env:         env,
		Dir:         dir,
		SysProcAttr: childAttr(),
	}

	var closeOnErr, childEnds []*os.File
	fail := func(err error) (*process, pipes, error) {
		for _, f := range closeOnErr {
			_ = f.Close()
		}
		return nil, pipes{}, err
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
	if stdoutSize > 0 {
		got, err := setPipeSize(outR, stdoutSize)
		if err != nil {
			log.Warn("could not raise the stdout pipe size", zap.Int("wanted", stdoutSize), zap.Int("size", got), zap.Error(err))
		} else {
			log.Info("stdout pipe size", zap.Int("bytes", got))
		}
	}
	errR, errW, err := pipe()
	if err != nil {
		return fail(err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	childEnds = append(childEnds, outW, errW)
	var ps pipes
	if withStdin {
		inR, inW, err := pipe()
		if err != nil {
			return fail(err)
		}
		cmd.Stdin = inR
		childEnds = append(childEnds, inR)
		ps.stdin = inW
	}
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("start %s: %w", path, err))
	}
	for _, f := range childEnds {
		_ = f.Close()
	}
	ps.stdout = outR
	pr := &process{cmd: cmd, pid: cmd.Process.Pid, log: log.With(zap.Int("pid", cmd.Process.Pid)), exited: make(chan struct{}), readEnds: []*os.File{outR, errR}}
	go func() {
		pr.waitErr = cmd.Wait()
		close(pr.exited)
	}()
	pr.drains.Add(1)
	go func() {
		defer pr.drains.Done()
		readLines(errR, func(line string) {
			pr.tailMu.Lock()
			if len(pr.tail) == tailLines {
				pr.tail = append(pr.tail[:0], pr.tail[1:]...)
			}
			pr.tail = append(pr.tail, line)
			pr.tailMu.Unlock()
			pr.log.Info("component server stderr", zap.String("line", line))
		})
	}()
	return pr, ps, nil
}

// drainStdout logs stdout lines until EOF. Before that, each line is
// offered to first until it returns true (the port announcement).
func (pr *process) drainStdout(r io.Reader, first func(line string) bool) {
	pr.drains.Add(1)
	go func() {
		defer pr.drains.Done()
		readLines(r, func(line string) {
			if first != nil {
				if first(line) {
					first = nil
					return
				}
			}
			pr.log.Info("component server stdout", zap.String("line", line))
		})
	}()
}

// exitCause returns the cause to report once the process has exited.
func (pr *process) exitCause() error { return &ExitError{Err: pr.waitErr} }

// stderrTail returns the last stderr lines.
func (pr *process) stderrTail() []string {
	pr.tailMu.Lock()
	defer pr.tailMu.Unlock()
	return append([]string(nil), pr.tail...)
}

// signal sends sig to the process group.
func (pr *process) signal(sig syscall.Signal) {
	if err := syscall.Kill(-pr.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		pr.log.Warn("signal process group", zap.String("signal", sig.String()), zap.Error(err))
	}
}

// stop ends the process group: SIGTERM and up to grace for the exit when
// grace > 0, then SIGKILL; it waits for the process and the drains. It
// is idempotent and safe to call after the process exited by itself.
func (pr *process) stop(grace time.Duration) {
	pr.stopOnce.Do(func() {
		select {
		case <-pr.exited:
		default:
			if grace > 0 {
				pr.signal(syscall.SIGTERM)
				t := time.NewTimer(grace)
				select {
				case <-pr.exited:
				case <-t.C:
					pr.log.Warn("component server ignored SIGTERM; killing it", zap.Duration("grace", grace))
				}
				t.Stop()
			}
		}
		// Also reaches grandchildren left in the group.
		pr.signal(syscall.SIGKILL)
		<-pr.exited
		pr.closeReadEnds(drainWait)
	})
}

// closeReadEnds waits up to d for the drains to see EOF, then closes the
// read ends (which ends them) and waits for them.
func (pr *process) closeReadEnds(d time.Duration) {
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
}

// readLines calls fn with each line of r (without the line end) until
// EOF or an error. Lines longer than maxLogLine are truncated.
func readLines(r io.Reader, fn func(line string)) {
	br := bufio.NewReaderSize(r, 32<<10)
	var buf []byte
	dropped := 0
	for {
		chunk, err := br.ReadSlice('\n')
		if err == nil {
			chunk = chunk[:len(chunk)-1] // the '\n'
		}
		if room := maxLogLine - len(buf); len(chunk) <= room {
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
