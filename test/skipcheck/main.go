// Command skipcheck reads `go test -json` on stdin, prints what plain
// `go test` would print (each package's closing line, the output of
// failed tests, build errors) and fails when a test failed or when a test
// skipped without being on the reviewed list of allowed skips.
//
//	go test -race -json ./... | go run ./test/skipcheck -allow test/allowed-skips.txt
//
// The allow list has one skip a line: the package (relative to the module,
// e.g. pkg/blob), the test's full name (subtests as Parent/sub) and a reason
// of at least a few words. Blank lines and lines starting with # are ignored.
//
// With -short (for `make check`, which runs `go test -short`), a skip whose
// message starts with "short: " (t.Skip("short: starts processes")) is
// allowed too: those tests run in `make test`, without -short.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string
}

type key struct{ pkg, test string }

// shortSkip matches the line t.Skip("short: ...") prints.
var shortSkip = regexp.MustCompile(`^\s+\S+\.go:\d+: short: `)

func main() {
	allowPath := flag.String("allow", "test/allowed-skips.txt", "the reviewed list of allowed skips")
	short := flag.Bool("short", false, `also allow skips whose message starts with "short: " (go test -short)`)
	module := flag.String("module", "github.com/stepflow-go/stepflow", "the module path, stripped from package names")
	flag.Parse()
	allowed, err := readAllow(*allowPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "skipcheck:", err)
		os.Exit(2)
	}
	r := check(os.Stdin, os.Stdout, allowed, *short, *module)
	if !r.ok() {
		os.Exit(1)
	}
}

// readAllow reads the allow list: "package test reason...".
func readAllow(path string) (map[key]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	allowed := map[key]string{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 {
			return nil, fmt.Errorf("%s:%d: want \"package test reason\" with a reason of a few words: %q", path, i+1, line)
		}
		allowed[key{f[0], f[1]}] = strings.Join(f[2:], " ")
	}
	return allowed, nil
}

type result struct {
	passed, failed, skippedOK int
	badSkips                  []string
	failedPkgs                []string
	sawTests                  bool
	badInput                  bool
}

func (r result) ok() bool {
	return r.failed == 0 && len(r.badSkips) == 0 && len(r.failedPkgs) == 0 && !r.badInput
}

func check(in io.Reader, out io.Writer, allowed map[key]string, short bool, module string) result {
	var r result
	rel := func(pkg string) string {
		if pkg == module {
			return "."
		}
		return strings.TrimPrefix(pkg, module+"/")
	}
	buf := map[key][]string{} // output of tests that are still running
	var allowedSeen []string
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			// Not from test2json (go test itself complaining): show it.
			fmt.Fprintf(out, "%s\n", line)
			continue
		}
		switch e.Action {
		case "build-output":
			fmt.Fprint(out, e.Output)
			continue
		case "build-fail":
			continue
		}
		k := key{rel(e.Package), e.Test}
		if e.Test == "" {
			switch e.Action {
			case "output":
				// The package's own lines: ok/FAIL/?, panics, TestMain's
				// output. The bare PASS of -v mode is noise.
				if e.Output != "PASS\n" {
					fmt.Fprint(out, e.Output)
				}
			case "fail":
				r.failedPkgs = append(r.failedPkgs, k.pkg)
				// A panic or a timeout ends the binary with tests still
				// running: show what they printed.
				var running []key
				for bk := range buf {
					if bk.pkg == k.pkg {
						running = append(running, bk)
					}
				}
				sort.Slice(running, func(i, j int) bool { return running[i].test < running[j].test })
				for _, bk := range running {
					fmt.Fprint(out, strings.Join(buf[bk], ""))
					delete(buf, bk)
				}
			}
			continue
		}
		r.sawTests = true
		switch e.Action {
		case "output":
			buf[k] = append(buf[k], e.Output)
		case "pass":
			r.passed++
			delete(buf, k)
		case "fail":
			r.failed++
			fmt.Fprint(out, strings.Join(buf[k], ""))
			delete(buf, k)
		case "skip":
			switch {
			case short && isShortSkip(buf[k]):
				r.skippedOK++
			case allowed[k] != "":
				r.skippedOK++
				allowedSeen = append(allowedSeen, k.pkg+" "+k.test)
			default:
				r.badSkips = append(r.badSkips, k.pkg+" "+k.test)
				fmt.Fprint(out, strings.Join(buf[k], ""))
			}
			delete(buf, k)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(out, "skipcheck: reading go test's output:", err)
		r.badInput = true
	}
	if !r.sawTests && len(r.failedPkgs) == 0 {
		fmt.Fprintln(out, "skipcheck: no test ran (is the input `go test -json`?)")
		r.badInput = true
	}
	// The plain closing line CI reads ("N passed, N failed, N skipped");
	// the skips counted are the allowed ones, listed below it.
	fmt.Fprintf(out, "skipcheck: %d passed, %d failed, %d skipped\n", r.passed, r.failed, r.skippedOK)
	if short {
		fmt.Fprintln(out, "skipcheck: with -short (skips whose message starts with \"short: \" are allowed)")
	}
	for _, s := range allowedSeen {
		fmt.Fprintf(out, "skipcheck: allowed skip: %s (%s)\n", s, allowed[keyOf(s)])
	}
	if len(r.badSkips) > 0 {
		fmt.Fprintf(out, "skipcheck: FAIL: %d test(s) skipped that are not on the allow list (make them run, or add them with a reason):\n", len(r.badSkips))
		for _, s := range r.badSkips {
			fmt.Fprintf(out, "  %s\n", s)
		}
	}
	return r
}

func keyOf(s string) key {
	p, t, _ := strings.Cut(s, " ")
	return key{p, t}
}

// isShortSkip reports whether the test skipped with t.Skip("short: ...").
func isShortSkip(output []string) bool {
	for _, l := range output {
		if shortSkip.MatchString(l) {
			return true
		}
	}
	return false
}
