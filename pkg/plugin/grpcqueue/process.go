package grpcqueue

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// tailLines is how many output lines are kept for exit reports.
const tailLines = 20

// drainWait bounds the wait for the output drains once the worker ended.
const drainWait = 2 * time.Second

// workerProcess is one launched SDK worker, in its own process group,
// with its stdout and stderr drained into the log.
type workerProcess struct {
	cmd    *exec.Cmd
	pid    int
	log    *zap.Logger
	exited chan struct{} // closed once Wait returned
	err    error         // Wait's error; valid after exited

	drains    sync.WaitGroup
	readEnds  []*os.File // the parent's ends of stdout and stderr
	closeOnce sync.Once
	mu        sync.Mutex
	tail      []string
}

// resolveCommand finds command like `which` (a name without '/' on PATH,
// a name with '/' relative to dir).
func resolveCommand(command, dir string) (string, error) {
	if !strings.Contains(command, "/") {
		p, err := exec.LookPath(command)
		if err != nil && !errors.Is(err, exec.ErrDot) {
			return "", fmt.Errorf("command %q: %w", command, err)
		}
		return filepath.Abs(p)
	}
	p := command
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("command %q: %w", command, err)
	}
	return p, nil
}

func startWorker(command string, args, env []string, dir string, log *zap.Logger) (*workerProcess, error) {
	path, err := resolveCommand(command, dir)
	if err != nil {
		return nil, err
	}
	// Our own pipes, not StdoutPipe: Wait must not wait for (or close
	// under) the drains, since a grandchild may hold the write ends after
	// the worker died, and the death must be seen at once.
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		_ = outR.Close()
		_ = outW.Close()
		return nil, fmt.Errorf("pipe: %w", err)
	}
	cmd := &exec.Cmd{Path: path, Args: append([]string{command}, args...), Env: env, Dir: dir,
		Stdout: outW, Stderr: errW, SysProcAttr: childAttr()}
	err = cmd.Start()
	_ = outW.Close()
	_ = errW.Close()
	if err != nil {
		_ = outR.Close()
		_ = errR.Close()
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	wp := &workerProcess{cmd: cmd, pid: cmd.Process.Pid, log: log.With(zap.Int("pid", cmd.Process.Pid)), exited: make(chan struct{}),
		readEnds: []*os.File{outR, errR}}
	wp.drains.Add(2)
	go wp.drain(outR, "worker stdout")
	go wp.drain(errR, "worker stderr")
	go func() {
		wp.err = cmd.Wait()
		close(wp.exited)
	}()
	return wp, nil
}

// closeReadEnds waits up to drainWait for the drains to reach EOF (the
// last lines of a crash), then closes the read ends, which ends them.
func (wp *workerProcess) closeReadEnds() {
	wp.closeOnce.Do(func() {
		done := make(chan struct{})
		go func() { wp.drains.Wait(); close(done) }()
		t := time.NewTimer(drainWait)
		select {
		case <-done:
		case <-t.C:
		}
		t.Stop()
		for _, f := range wp.readEnds {
			_ = f.Close()
		}
		<-done
	})
}

func (wp *workerProcess) drain(r io.Reader, what string) {
	defer wp.drains.Done()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		wp.mu.Lock()
		if len(wp.tail) == tailLines {
			wp.tail = append(wp.tail[:0], wp.tail[1:]...)
		}
		wp.tail = append(wp.tail, line)
		wp.mu.Unlock()
		wp.log.Info(what, zap.String("line", line))
	}
	_, _ = io.Copy(io.Discard, r) // a line too long for the scanner
}

// outputTail returns the last output lines.
func (wp *workerProcess) outputTail() []string {
	wp.mu.Lock()
	defer wp.mu.Unlock()
	return append([]string(nil), wp.tail...)
}

// exitError describes how the process ended.
func (wp *workerProcess) exitError() error {
	wp.closeReadEnds()
	status := "exit status 0"
	if wp.err != nil {
		status = wp.err.Error()
	}
	tail := wp.outputTail()
	if len(tail) == 0 {
		return fmt.Errorf("worker process %d exited: %s", wp.pid, status)
	}
	return fmt.Errorf("worker process %d exited: %s; last output: %s", wp.pid, status, strings.Join(tail, " | "))
}

func (wp *workerProcess) signal(sig syscall.Signal) {
	if err := syscall.Kill(-wp.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		wp.log.Warn("signal worker process group", zap.String("signal", sig.String()), zap.Error(err))
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs the group and waits
// for the exit.
func (wp *workerProcess) stop(grace time.Duration) {
	select {
	case <-wp.exited:
	default:
		wp.signal(syscall.SIGTERM)
		t := time.NewTimer(grace)
		select {
		case <-wp.exited:
		case <-t.C:
			wp.log.Warn("worker ignored SIGTERM; killing it", zap.Duration("grace", grace))
		}
		t.Stop()
	}
	wp.signal(syscall.SIGKILL)
	<-wp.exited
	wp.closeReadEnds()
}
