package main

// expectedAfterMerge lists the HTTP paths the manifests use that the
// binaries of this branch do not serve yet: another change adds them (the
// coordinator's /healthz and /readyz, /metrics, and GET /api/v1/backlog
// for KEDA). The dynamic check GETs them like every other path; a 404 on
// one of these is reported as pending instead of failing, anything else
// is checked as usual (200, and the backlog's JSON shape). Once they are
// served, the check says so: remove them from here, and every path is
// then required.
var expectedAfterMerge = map[string][]string{
	"coordinator": {"/healthz", "/readyz", "/metrics", backlogPath},
	"worker":      {"/metrics"},
}

// backlogPath and backlogField: the coordinator's
// {"queued":N,"inFlight":M,"backlog":N+M} that KEDA's metrics-api scaler
// reads.
const (
	backlogPath  = "/api/v1/backlog"
	backlogField = "backlog"
)
