package queue

// Subjects of the coordinator's NATS request/reply API, used by workers
// for runs that components submit (runs/submit, runs/get and the legacy
// flows/* callbacks). The coordinator owns run creation; workers never
// create runs themselves. Requests and replies are JSON:
//
//	stepflow.api.runs.submit  request  {"flowId","inputs":[…],"wait":false,"maxConcurrency":N|null,
//	                                    "overrides":{…}|null,"variables":{…}|null,"parentRunId":"…"}
//	                          reply    RunStatusProtocol (runs.Status.Value()) or {"error":{"code","message"}}
//	stepflow.api.runs.get     request  {"runId","wait":false,"includeResults":false,"resultOrder":"by_index"|"by_completion"}
//	                          reply    RunStatusProtocol or {"error":{"code","message"}}
//
// A request with "wait": true is answered when the run has finished; the
// requester's timeout bounds the wait, so waiting clients poll with
// "wait": true in a loop rather than holding one request forever.
// Error codes are the JSON-RPC ones the component protocol uses
// (-32011 not found, -32602 invalid params, -32000 other).
const (
	// SubjectRunsSubmit creates a run.
	SubjectRunsSubmit = "stepflow.api.runs.submit"
	// SubjectRunsGet reads a run's status (and results).
	SubjectRunsGet = "stepflow.api.runs.get"
	// APIQueueGroup is the queue group coordinators serve the API in, so
	// that one of several coordinators answers each request.
	APIQueueGroup = "stepflow-coordinators"
)
