package coordinator_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// replyDropper is a TCP proxy between NATS clients and a nats-server
// that can lose the answer to a request after forwarding the request: a
// JetStream publish is stored, and its PubAck never reaches the client.
// It reads the NATS client protocol just enough to match publishes and
// the messages that answer them.
type replyDropper struct {
	t      testing.TB
	ln     net.Listener
	target string

	mu       sync.Mutex
	rules    []*loseRule
	dropping map[string]bool // reply subjects whose answer to lose
	dropped  chan string     // the subject of each publish whose answer was lost

	wg    sync.WaitGroup
	conns map[net.Conn]bool
}

// newReplyDropper listens on loopback and forwards to target
// (host:port); it stops at cleanup.
func newReplyDropper(t testing.TB, target string) *replyDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &replyDropper{t: t, ln: ln, target: target, dropping: map[string]bool{}, dropped: make(chan string, 64), conns: map[net.Conn]bool{}}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

// URL is the proxy's NATS URL.
func (p *replyDropper) URL() string { return "nats://" + p.ln.Addr().String() }

// loseRule loses the answers to the next left publishes that match.
type loseRule struct {
	match func(subject string, data []byte) bool
	left  int
}

// lose arms the proxy: the answers to the next n publishes for which
// match is true (given their subject and payload, headers excluded) are
// lost.
func (p *replyDropper) lose(n int, match func(subject string, data []byte) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = append(p.rules, &loseRule{match: match, left: n})
}

// onSubject matches the publishes on subjects starting with prefix.
func onSubject(prefix string) func(string, []byte) bool {
	return func(subject string, _ []byte) bool { return strings.HasPrefix(subject, prefix) }
}

func (p *replyDropper) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *replyDropper) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = true
	return true
}

func (p *replyDropper) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			p.mu.Lock()
			for c := range p.conns {
				_ = c.Close()
			}
			p.conns = nil
			p.mu.Unlock()
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		if !p.track(client) || !p.track(server) {
			_ = client.Close()
			_ = server.Close()
			return
		}
		p.wg.Go(func() { p.pipe(client, server, p.fromClient) })
		p.wg.Go(func() { p.pipe(server, client, p.fromServer) })
	}
}

// pipe copies src to dst one protocol operation at a time; filter
// decides, from the operation's line, whether it is forwarded.
func (p *replyDropper) pipe(src, dst net.Conn, filter func(op []string, payload []byte) bool) {
	defer func() { _ = src.Close(); _ = dst.Close() }()
	r := bufio.NewReaderSize(src, 64<<10)
	w := bufio.NewWriterSize(dst, 64<<10)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		line = append([]byte(nil), line...)
		op := strings.Fields(string(bytes.TrimRight(line, "\r\n")))
		size := payloadSize(op)
		var payload []byte
		if size >= 0 {
			payload = make([]byte, size+2) // and its CRLF
			if _, err := io.ReadFull(r, payload); err != nil {
				return
			}
		}
		if filter(op, payload) {
			if _, err := w.Write(line); err != nil {
				return
			}
			if _, err := w.Write(payload); err != nil {
				return
			}
		}
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

// payloadSize is the size of the payload that follows an operation's
// line: PUB and MSG end with it, HPUB and HMSG with the total; -1 for
// operations without a payload.
func payloadSize(op []string) int {
	if len(op) < 2 {
		return -1
	}
	switch strings.ToUpper(op[0]) {
	case "PUB", "MSG", "HPUB", "HMSG":
		n, err := strconv.Atoi(op[len(op)-1])
		if err != nil {
			panic(fmt.Sprintf("replyDropper: malformed %q", strings.Join(op, " ")))
		}
		return n
	}
	return -1
}

// fromClient notes the reply subject of a publish whose answer is to be
// lost; every operation is forwarded.
func (p *replyDropper) fromClient(op []string, payload []byte) bool {
	var subject, reply string
	var data []byte
	switch strings.ToUpper(op[0]) {
	case "PUB": // PUB <subject> [reply] <size>
		if len(op) == 4 {
			subject, reply, data = op[1], op[2], payload[:len(payload)-2]
		}
	case "HPUB": // HPUB <subject> [reply] <header size> <total size>
		if len(op) == 5 {
			hdr, err := strconv.Atoi(op[3])
			if err != nil {
				panic(fmt.Sprintf("replyDropper: malformed %q", strings.Join(op, " ")))
			}
			subject, reply, data = op[1], op[2], payload[hdr:len(payload)-2]
		}
	}
	if reply == "" {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.rules {
		if r.left > 0 && r.match(subject, data) {
			r.left--
			p.dropping[reply] = true
			p.dropped <- subject
			break
		}
	}
	return true
}

// fromServer loses the answers noted by fromClient.
func (p *replyDropper) fromServer(op []string, _ []byte) bool {
	switch strings.ToUpper(op[0]) {
	case "MSG", "HMSG":
	default:
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dropping[op[1]] {
		delete(p.dropping, op[1])
		return false
	}
	return true
}

// waitDropped waits for n lost answers.
func (p *replyDropper) waitDropped(t testing.TB, n int) {
	t.Helper()
	for range n {
		select {
		case <-p.dropped:
		case <-testCtx(t).Done():
			t.Fatal(errors.New("no answer was lost"))
		}
	}
}
