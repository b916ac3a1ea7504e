package grpcqueue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
	tasksv1 "github.com/stepflow-go/stepflow/proto/tasksv1"
)

// service implements TasksService, OrchestratorService and BlobService
// for one plugin's dispatcher, over the host's blob store and runs.
type service struct {
	tasksv1.UnimplementedTasksServiceServer
	tasksv1.UnimplementedOrchestratorServiceServer
	tasksv1.UnimplementedBlobServiceServer

	d    *dispatcher
	addr string // our own address, for GetOrchestratorForRun
	// remote: served on TCP (a nats plugin's `listen`), where peers carry
	// no credentials: PullTasks is refused (tasks travel on the stream)
	// and nested runs need a task of their root run in flight.
	remote bool
	blobs  blob.Store
	runs   pluginapi.Runs
	log    *zap.Logger
}

func (s *service) register(g *grpc.Server) {
	tasksv1.RegisterTasksServiceServer(g, s)
	tasksv1.RegisterOrchestratorServiceServer(g, s)
	tasksv1.RegisterBlobServiceServer(g, s)
}

// grpcError maps a dispatcher refusal to its gRPC status.
func grpcError(err error) error {
	var se *statusError
	if errors.As(err, &se) {
		if se.notFound {
			return status.Error(codes.NotFound, se.msg)
		}
		return status.Error(codes.FailedPrecondition, se.msg)
	}
	if errors.Is(err, ErrClosed) {
		return status.Error(codes.Unavailable, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// PullTasks streams the tasks of a queue to one worker until it goes.
func (s *service) PullTasks(req *tasksv1.PullTasksRequest, stream grpc.ServerStreamingServer[tasksv1.TaskAssignment]) error {
	if s.remote {
		return status.Error(codes.PermissionDenied, fmt.Sprintf("plugin %q: PullTasks is not served on the TCP endpoint: tasks travel on the NATS stream", s.d.plugin))
	}
	q := req.GetQueueName()
	if q == "" {
		return status.Error(codes.InvalidArgument, fmt.Sprintf("plugin %q: PullTasks without queue_name", s.d.plugin))
	}
	wid := req.GetWorkerId()
	if wid == "" {
		wid = "anonymous-" + uuid.NewString()
	}
	ws, err := s.d.connect(q, wid)
	if err != nil {
		return grpcError(err)
	}
	log := s.log.With(zap.String("queue", q), zap.String("worker", wid))
	log.Info("worker connected")
	ctx := stream.Context()
	var cause error
	defer func() {
		log.Info("worker disconnected", zap.Error(cause))
		s.d.disconnect(ws, cause)
	}()
	for {
		t, err := s.d.next(ctx, ws)
		if err != nil {
			cause = err
			if errors.Is(err, ErrClosed) {
				return status.Error(codes.Unavailable, err.Error())
			}
			return err
		}
		if err := stream.Send(t.assign); err != nil {
			cause = fmt.Errorf("send task %s: %w", t.id, err)
			return err
		}
	}
}

// GetOrchestratorForRun names this runtime: it owns every run.
func (s *service) GetOrchestratorForRun(context.Context, *tasksv1.GetOrchestratorForRunRequest) (*tasksv1.GetOrchestratorForRunResponse, error) {
	return &tasksv1.GetOrchestratorForRunResponse{OrchestratorServiceUrl: s.addr}, nil
}

// TaskHeartbeat claims or keeps alive a task.
func (s *service) TaskHeartbeat(_ context.Context, req *tasksv1.TaskHeartbeatRequest) (*tasksv1.TaskHeartbeatResponse, error) {
	res, err := s.d.heartbeat(req.GetTaskId(), req.GetWorkerId())
	if err != nil {
		s.log.Warn("refused TaskHeartbeat", zap.Error(err))
		return nil, grpcError(err)
	}
	return res, nil
}

// CompleteTask delivers a task's result.
func (s *service) CompleteTask(_ context.Context, req *tasksv1.CompleteTaskRequest) (*tasksv1.CompleteTaskResponse, error) {
	if err := s.d.complete(req); err != nil {
		s.log.Warn("refused CompleteTask", zap.Error(err))
		return nil, grpcError(err)
	}
	return &tasksv1.CompleteTaskResponse{}, nil
}

// SubmitRun starts a nested run through the host's runs, as the HTTP
// transport's runs/submit does. Its parent is the root run the worker
// names (the run of the calling task, which the TaskContext carries).
func (s *service) SubmitRun(ctx context.Context, req *tasksv1.OrchestratorSubmitRunRequest) (*tasksv1.OrchestratorRunStatus, error) {
	if err := s.checkRun("SubmitRun", req.GetRootRunId()); err != nil {
		return nil, err
	}
	if s.runs == nil {
		return nil, status.Error(codes.Unimplemented, fmt.Sprintf("plugin %q: nested runs are not available here", s.d.plugin))
	}
	rr := req.GetRunRequest()
	if rr == nil || rr.GetFlowId() == "" {
		return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("plugin %q: SubmitRun without run_request.flow_id", s.d.plugin))
	}
	inputs := make([]value.Value, len(rr.GetInput()))
	for i, in := range rr.GetInput() {
		v, err := fromProto(in)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("plugin %q: SubmitRun input %d: %v", s.d.plugin, i, err))
		}
		inputs[i] = v
	}
	conc := int(rr.GetMaxConcurrency())
	if conc == 0 {
		conc = len(inputs) // upstream: unset means the number of items
	}
	r := runs.Request{FlowID: rr.GetFlowId(), Inputs: inputs, Wait: rr.GetWait(), MaxConcurrency: conc, ParentRunID: req.GetRootRunId()}
	if rr.Overrides != nil {
		ov, err := fromStruct(rr.Overrides, 0)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("plugin %q: SubmitRun overrides: %v", s.d.plugin, err))
		}
		r.Overrides = ov
	}
	if len(rr.GetVariables()) > 0 {
		r.Variables = make(map[string]value.Value, len(rr.GetVariables()))
		for k, pv := range rr.GetVariables() {
			v, err := fromProto(pv)
			if err != nil {
				return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("plugin %q: SubmitRun variable %q: %v", s.d.plugin, k, err))
			}
			r.Variables[k] = v
		}
	}
	if rr.TimeoutSecs != nil && rr.GetWait() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(rr.GetTimeoutSecs())*time.Second)
		defer cancel()
	}
	st, err := s.runs.Submit(ctx, r)
	if err != nil {
		return nil, runsStatus(s.d.plugin, "SubmitRun", err)
	}
	if !rr.GetWait() {
		st.Results = nil
	}
	out, err := runStatus(st, req.GetRootRunId())
	if err != nil {
		return nil, status.Error(codes.Internal, fmt.Sprintf("plugin %q: SubmitRun: %v", s.d.plugin, err))
	}
	return out, nil
}

// GetRun reads (or waits for) a run.
func (s *service) GetRun(ctx context.Context, req *tasksv1.OrchestratorGetRunRequest) (*tasksv1.OrchestratorRunStatus, error) {
	if err := s.checkRun("GetRun", req.GetRootRunId()); err != nil {
		return nil, err
	}
	if s.runs == nil {
		return nil, status.Error(codes.Unimplemented, fmt.Sprintf("plugin %q: nested runs are not available here", s.d.plugin))
	}
	if _, err := uuid.Parse(req.GetRunId()); err != nil {
		return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("plugin %q: GetRun: run_id %q is not a UUID", s.d.plugin, req.GetRunId()))
	}
	opts := runs.GetOptions{Wait: req.GetWait(), IncludeResults: req.GetIncludeResults(),
		ByCompletion: req.GetResultOrder() == tasksv1.ResultOrder_RESULT_ORDER_BY_COMPLETION}
	if req.TimeoutSecs != nil && req.GetWait() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(req.GetTimeoutSecs())*time.Second)
		defer cancel()
	}
	st, err := s.runs.Get(ctx, req.GetRunId(), opts)
	if err != nil {
		return nil, runsStatus(s.d.plugin, "GetRun", err)
	}
	if !opts.IncludeResults {
		st.Results = nil
	}
	out, err := runStatus(st, req.GetRootRunId())
	if err != nil {
		return nil, status.Error(codes.Internal, fmt.Sprintf("plugin %q: GetRun: %v", s.d.plugin, err))
	}
	return out, nil
}

// checkRun refuses, on the TCP endpoint, nested run calls that do not
// come from a task of their root run in flight here (the SDK sends the
// root_run_id of the task it runs).
func (s *service) checkRun(what, root string) error {
	if !s.remote || s.d.runInFlight(root) {
		return nil
	}
	msg := fmt.Sprintf("plugin %q: %s with root_run_id %q: no task of that run is in flight here; refused", s.d.plugin, what, root)
	s.log.Warn("refused a nested run call", zap.String("call", what), zap.String("root_run_id", root))
	return status.Error(codes.PermissionDenied, msg)
}

func runsStatus(plugin, what string, err error) error {
	msg := fmt.Sprintf("plugin %q: %s: %v", plugin, what, err)
	switch {
	case errors.Is(err, runs.ErrRunNotFound), errors.Is(err, runs.ErrFlowNotFound):
		// NOT_FOUND would send the SDK looking for another orchestrator.
		return status.Error(codes.InvalidArgument, msg)
	case errors.Is(err, runs.ErrInvalidRequest):
		return status.Error(codes.InvalidArgument, msg)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, msg)
	}
	return status.Error(codes.Internal, msg)
}

// PutBlob stores a JSON blob ("data" or "flow") in the host's store.
func (s *service) PutBlob(ctx context.Context, req *tasksv1.PutBlobRequest) (*tasksv1.PutBlobResponse, error) {
	jd, ok := req.Content.(*tasksv1.PutBlobRequest_JsonData)
	if !ok {
		return nil, status.Error(codes.Unimplemented, fmt.Sprintf("plugin %q: PutBlob: only JSON blobs (json_data) are supported, not raw_data", s.d.plugin))
	}
	data, err := fromProto(jd.JsonData)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("plugin %q: PutBlob: %v", s.d.plugin, err))
	}
	kind := blob.KindData
	switch req.GetBlobType() {
	case "", string(blob.KindData):
	case string(blob.KindFlow):
		kind = blob.KindFlow
		f, err := flow.FromValue(data)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("plugin %q: PutBlob: invalid flow: %v", s.d.plugin, err))
		}
		data = f.Value()
	default:
		return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("plugin %q: PutBlob: unsupported blob_type %q (expected data or flow)", s.d.plugin, req.GetBlobType()))
	}
	id, err := s.blobs.Put(ctx, kind, data)
	if err != nil {
		return nil, status.Error(codes.Internal, fmt.Sprintf("plugin %q: PutBlob: %v", s.d.plugin, err))
	}
	res := &tasksv1.PutBlobResponse{BlobId: id}
	if req.Filename != nil {
		res.Filename = req.Filename
	}
	return res, nil
}

// GetBlob reads a blob of the host's store.
func (s *service) GetBlob(ctx context.Context, req *tasksv1.GetBlobRequest) (*tasksv1.GetBlobResponse, error) {
	b, err := s.blobs.Get(ctx, req.GetBlobId())
	if err != nil {
		code := codes.Internal
		if errors.Is(err, blob.ErrNotFound) {
			code = codes.InvalidArgument // NOT_FOUND would send the SDK looking elsewhere
		}
		return nil, status.Error(code, fmt.Sprintf("plugin %q: GetBlob %s: %v", s.d.plugin, req.GetBlobId(), err))
	}
	pv, err := toProto(b.Data)
	if err != nil {
		return nil, status.Error(codes.Internal, fmt.Sprintf("plugin %q: GetBlob %s: %v", s.d.plugin, req.GetBlobId(), err))
	}
	return &tasksv1.GetBlobResponse{Content: &tasksv1.GetBlobResponse_JsonData{JsonData: pv}, BlobType: string(b.Kind), BlobId: b.ID}, nil
}
