package coordinator_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
)

// artifactsDir is where browser tests keep their screenshots:
// $STEPFLOW_ARTIFACTS_DIR, or test/artifacts/ at the repository root
// (gitignored).
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("STEPFLOW_ARTIFACTS_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "test", "artifacts")
	}
	abs, err := filepath.Abs(dir)
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(abs, 0o755))
	return abs
}

// page is a headless Chromium tab for one test.
type page struct {
	t   *testing.T
	ctx context.Context
}

// openBrowser starts the Debian chromium binary headless. A missing
// binary fails the test: CI installs it (.ci/run), and a browser test
// that skips proves nothing.
//
// Under go test -short (make check) the test skips instead.
func openBrowser(t *testing.T) *page {
	t.Helper()
	if testing.Short() {
		t.Skip("short: drives a headless Chromium")
	}
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed (%v): run `apt-get install -y chromium` (CI's .ci/run installs it)", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.NoSandbox, // tests run as root, where Chromium's sandbox refuses to start
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1000),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		// Close the browser and wait for its process and chromedp's
		// goroutines to end, so that goleak finds nothing.
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		_ = chromedp.Cancel(cctx)
		ccancel()
		cancel()
		cancelAlloc()
	})
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate("about:blank")), "start chromium")
	return &page{t: t, ctx: ctx}
}

// do runs actions, failing the test (with a screenshot) on error.
func (p *page) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.fail(what, err)
	}
}

// wait polls a JavaScript predicate until it is true.
func (p *page) wait(what, predicate string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 25*time.Second)
	defer cancel()
	for {
		_, err := chromedp.Run(ctx, chromedp.Poll[bool](predicate,
			chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second)))
		if err == nil {
			return
		}
		if ctx.Err() != nil || errors.Is(err, chromedp.ErrPollingTimeout) {
			p.fail(what, err)
		}
		// A form post or a redirect replaced the document (and its
		// JavaScript context) under the poll: poll the new one.
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
}

// screenshot keeps a full-page screenshot in the artifacts directory.
func (p *page) screenshot(name string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(p.t, err)
	path := filepath.Join(artifactsDir(p.t), name)
	require.NoError(p.t, os.WriteFile(path, png, 0o644))
	p.t.Logf("screenshot: %s", path)
}

// fail keeps a screenshot and the page's text, then fails the test.
func (p *page) fail(what string, err error) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	if png, serr := chromedp.Run(ctx, chromedp.FullScreenshot(100)); serr == nil {
		path := filepath.Join(artifactsDir(p.t), "runs-page-failure.png")
		if os.WriteFile(path, png, 0o644) == nil {
			p.t.Logf("screenshot of the failure: %s", path)
		}
	}
	p.t.Fatalf("%s: %v\npage text:\n%s", what, err, text)
}

// row is a JavaScript expression for a run's row on the page.
func row(runID string) string {
	return fmt.Sprintf(`document.querySelector('tr.run[data-run=%q]')`, runID)
}

// cell is the trimmed text of a field of a run's row ("" when absent).
func cell(runID, field string) string {
	return fmt.Sprintf(`((%s || document).querySelector('[data-f=%q]') || {textContent: ""}).textContent.trim()`, row(runID), field)
}

// TestRunsPageChromium drives the runs page in real headless Chromium
// against a coordinator with a token and a real worker: sign in through
// the form, watch a run's counts move over SSE, scale it, see it
// complete, cancel another, and read the errors of a failed one. The
// final page is kept as a screenshot in the artifacts directory.
func TestRunsPageChromium(t *testing.T) {
	const token = "browser-s3cret-token"
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.AuthToken = token })
	cl := newClient(t, c)
	cl.token = token
	g := newGates()
	startRealWorker(t, c, "browser-w1", 4, g)
	held := cl.storeFlowJSON(heldFlow)
	boom := cl.storeFlowJSON(failFlow)
	runA := cl.submitGated(held, "a", 6, 2)
	g.waitStarted(t, "a", 2)

	p := openBrowser(t)

	// Signed out, the page leads to the sign-in form; a wrong token is
	// refused there.
	p.do("open the page", chromedp.Navigate(c.URL()+"/ui/"))
	p.wait("the sign-in form", `location.pathname === "/ui/login" && !!document.querySelector("#token")`)
	p.do("sign in with a wrong token", chromedp.SetValue(chromedp.ID("token"), "wrong"), chromedp.Click(chromedp.ID("signin")))
	p.wait("the wrong token refused", `(document.querySelector("#login-error") || {textContent: ""}).textContent.includes("Wrong token")`)
	p.do("sign in", chromedp.SetValue(chromedp.ID("token"), token), chromedp.Click(chromedp.ID("signin")))
	p.wait("the runs page", `location.pathname === "/ui/" && !!document.querySelector("#runs")`)

	// Run A: 2 of 6 items running (its concurrency), 4 queued, followed
	// live over server-sent events.
	p.wait("run A live, 2 running and 4 queued", fmt.Sprintf(`!!%s && %s.dataset.live === "sse" && %s === "2" && %s === "4" && %s === "0/6 (0%%)"`,
		row(runA), row(runA), cell(runA, "running"), cell(runA, "queued"), cell(runA, "done")))
	// The cluster panels: the worker with its busy slots, the backlog.
	p.wait("the worker panel", `(document.querySelector('tr[data-worker="browser-w1"] [data-f=slots]') || {textContent: ""}).textContent.includes("2/4")`)
	p.wait("the stream panel", `(document.querySelector('tr[data-stream="STEPFLOW_ITEMS"] [data-f=messages]') || {textContent: ""}).textContent === "6"`)

	// Two items finish: the counts move without a reload.
	g.release("a", 2)
	p.wait("run A at 2/6", fmt.Sprintf(`%s === "2/6 (33%%)" && %s === "2"`, cell(runA, "done"), cell(runA, "completed")))

	// Scale: 4 at once. The API shows the new concurrency, and the 4
	// remaining items all run.
	sel := fmt.Sprintf(`tr.run[data-run=%q] `, runA)
	p.do("scale run A to 4",
		chromedp.SetValue(chromedp.CSS(sel+"input.scale"), "4"),
		chromedp.Click(chromedp.CSS(sel+`button[data-action="scale"]`)))
	waitFor(t, 20*time.Second, func() bool {
		r := cl.get("/runs/" + runA)
		return r.Status == 200 && r.JSON(t)["maxConcurrency"] == 4.0
	}, "run A's maxConcurrency never became 4")
	g.waitStarted(t, "a", 2)
	p.wait("run A scaled, 4 running", fmt.Sprintf(`%s === "4" && %s === "4" && %s === "0"`,
		cell(runA, "maxConcurrency"), cell(runA, "running"), cell(runA, "queued")))

	p.wait("the worker panel, 4 busy", `(document.querySelector('tr[data-worker="browser-w1"] [data-f=slots]') || {textContent: ""}).textContent.includes("4/4")`)
	p.screenshot("runs-page-live.png")

	// Released, run A completes.
	g.openAll("a")
	p.wait("run A completed", fmt.Sprintf(`%s.dataset.status === "completed" && %s === "6/6 (100%%)" && %s === "6"`,
		row(runA), cell(runA, "done"), cell(runA, "completed")))

	// Run B, held, is cancelled from the page.
	runB := cl.submitGated(held, "b", 3, 3)
	g.waitStarted(t, "b", 3)
	p.wait("run B listed", fmt.Sprintf(`!!%s && %s.dataset.status === "running" && %s === "3"`, row(runB), row(runB), cell(runB, "running")))
	p.do("cancel run B", chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr.run[data-run=%q] button[data-action="cancel"]`, runB))))
	p.wait("run B cancelled", fmt.Sprintf(`%s.dataset.status === "cancelled"`, row(runB)))
	cl.waitStatus(runB, "cancelled")

	// Run C fails item by item: the page lists the errors.
	runC := cl.submitGated(boom, "c", 3, 3)
	p.wait("run C failed with its errors", fmt.Sprintf(`%s.dataset.status === "failed" && %s === "3" &&
		[...document.querySelectorAll('tr[data-detail=%q] ul.failures li')].filter(li => li.textContent.includes("disk on fire at item")).length === 3`,
		row(runC), cell(runC, "failed"), runC))
	text, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](fmt.Sprintf(`document.querySelector('tr[data-detail=%q]').innerText`, runC)))
	require.NoError(t, err)
	for i := range 3 {
		require.Contains(t, text, fmt.Sprintf("disk on fire at item %d", i))
	}
	p.wait("the worker's items", `(document.querySelector('tr[data-worker="browser-w1"] [data-f=done]') || {textContent: ""}).textContent === "6"`)

	p.screenshot("runs-page.png")

	// The page made no request the API refused (a missing CSRF header
	// would have shown as an error message).
	msg, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](`document.querySelector("#message").className + ": " + document.querySelector("#message").textContent`))
	require.NoError(t, err)
	require.False(t, strings.HasPrefix(msg, "error"), msg)
}
