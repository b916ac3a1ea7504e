package main

import (
	"bytes"
	"strings"
	"testing"
)

const mod = "example.com/m"

func ev(action, pkg, test, output string) string {
	return `{"Action":"` + action + `","Package":"` + mod + "/" + pkg + `","Test":"` + test + `","Output":` + quote(output) + "}\n"
}

func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '"':
			b.WriteString(`\"`)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func run(t *testing.T, in string, allowed map[key]string, short bool) (result, string) {
	t.Helper()
	var out bytes.Buffer
	r := check(strings.NewReader(in), &out, allowed, short, mod)
	return r, out.String()
}

func TestPassKeepsClosingLines(t *testing.T) {
	in := ev("run", "a", "TestA", "") +
		ev("output", "a", "TestA", "=== RUN   TestA\n") +
		ev("output", "a", "TestA", "--- PASS: TestA (0.00s)\n") +
		ev("pass", "a", "TestA", "") +
		ev("output", "a", "", "PASS\n") +
		ev("output", "a", "", "ok  \texample.com/m/a\t0.01s\n") +
		ev("pass", "a", "", "")
	r, out := run(t, in, nil, false)
	if !r.ok() || r.passed != 1 {
		t.Fatalf("not ok: %+v\n%s", r, out)
	}
	if !strings.Contains(out, "ok  \texample.com/m/a\t0.01s\n") || strings.Contains(out, "=== RUN") || strings.Contains(out, "PASS\n") {
		t.Fatalf("output:\n%s", out)
	}
}

func TestFailShowsOutput(t *testing.T) {
	in := ev("output", "a", "TestA", "    a_test.go:3: boom\n") +
		ev("output", "a", "TestA", "--- FAIL: TestA (0.00s)\n") +
		ev("fail", "a", "TestA", "") +
		ev("output", "a", "", "FAIL\texample.com/m/a\t0.01s\n") +
		ev("fail", "a", "", "")
	r, out := run(t, in, nil, false)
	if r.ok() || !strings.Contains(out, "boom") || !strings.Contains(out, "FAIL\texample.com/m/a") {
		t.Fatalf("%+v\n%s", r, out)
	}
}

func TestSkips(t *testing.T) {
	skip := func(test, msg string) string {
		return ev("output", "a", test, "    a_test.go:9: "+msg+"\n") +
			ev("output", "a", test, "--- SKIP: "+test+" (0.00s)\n") +
			ev("skip", "a", test, "")
	}
	allowed := map[key]string{{"a", "TestAllowed"}: "a reviewed reason"}

	r, out := run(t, skip("TestAllowed", "race"), allowed, false)
	if !r.ok() || r.skippedOK != 1 {
		t.Fatalf("allowed skip: %+v\n%s", r, out)
	}
	r, out = run(t, skip("TestOther", "upstream tests not available"), allowed, false)
	if r.ok() || !strings.Contains(out, "a TestOther") || !strings.Contains(out, "upstream tests not available") {
		t.Fatalf("unlisted skip: %+v\n%s", r, out)
	}
	// "short: " skips pass only with -short.
	r, _ = run(t, skip("TestSlow", "short: starts processes"), allowed, true)
	if !r.ok() {
		t.Fatalf("short skip with -short: %+v", r)
	}
	r, _ = run(t, skip("TestSlow", "short: starts processes"), allowed, false)
	if r.ok() {
		t.Fatalf("short skip without -short: %+v", r)
	}
	r, _ = run(t, skip("TestSlow", "slow"), allowed, true)
	if r.ok() {
		t.Fatalf("other skip with -short: %+v", r)
	}
}

func TestPanicShowsRunningTests(t *testing.T) {
	in := ev("output", "a", "TestA", "=== RUN   TestA\n") +
		ev("output", "a", "TestA", "panic: oops\n") +
		ev("output", "a", "", "FAIL\texample.com/m/a\t0.01s\n") +
		ev("fail", "a", "", "")
	r, out := run(t, in, nil, false)
	if r.ok() || !strings.Contains(out, "panic: oops") {
		t.Fatalf("%+v\n%s", r, out)
	}
}

func TestNoInput(t *testing.T) {
	r, _ := run(t, "", nil, false)
	if r.ok() {
		t.Fatal("empty input passed")
	}
}
