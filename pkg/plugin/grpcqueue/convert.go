package grpcqueue

import (
	"fmt"
	"math"
	"slices"
	"strconv"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
	tasksv1 "github.com/stepflow-go/stepflow/proto/tasksv1"
)

// maxDepth bounds the nesting of converted values, as value.MaxDepth
// bounds parsed documents.
const maxDepth = value.MaxDepth

// toProto converts a JSON value to a protobuf Value. Numbers become
// doubles (the protocol's only number type); object key order is lost on
// the wire (Struct is a map).
func toProto(v value.Value) (*structpb.Value, error) { return toProtoDepth(v, 0) }

func toProtoDepth(v value.Value, depth int) (*structpb.Value, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("value nested deeper than %d levels", maxDepth)
	}
	switch x := v.(type) {
	case nil:
		return structpb.NewNullValue(), nil
	case bool:
		return structpb.NewBoolValue(x), nil
	case string:
		return structpb.NewStringValue(x), nil
	case value.Number:
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil {
			return nil, fmt.Errorf("number %s: %w", x, err)
		}
		return structpb.NewNumberValue(f), nil
	case []value.Value:
		l := &structpb.ListValue{Values: make([]*structpb.Value, len(x))}
		for i, e := range x {
			pv, err := toProtoDepth(e, depth+1)
			if err != nil {
				return nil, err
			}
			l.Values[i] = pv
		}
		return structpb.NewListValue(l), nil
	case *value.Object:
		s, err := toStruct(x, depth)
		if err != nil {
			return nil, err
		}
		return structpb.NewStructValue(s), nil
	default:
		return nil, fmt.Errorf("cannot convert %T to a protobuf Value", v)
	}
}

func toStruct(o *value.Object, depth int) (*structpb.Struct, error) {
	s := &structpb.Struct{Fields: make(map[string]*structpb.Value, o.Len())}
	for i := range o.Len() {
		k, e := o.At(i)
		pv, err := toProtoDepth(e, depth+1)
		if err != nil {
			return nil, err
		}
		s.Fields[k] = pv
	}
	return s, nil
}

// fromProto converts a protobuf Value to a JSON value. Whole doubles
// within ±2^53 become integers (the SDK sends every number as a double;
// Python's own JSON would have written 30, not 30.0); object keys are
// sorted (Struct is a map, so the worker's order is gone).
func fromProto(pv *structpb.Value) (value.Value, error) { return fromProtoDepth(pv, 0) }

func fromProtoDepth(pv *structpb.Value, depth int) (value.Value, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("value nested deeper than %d levels", maxDepth)
	}
	if pv == nil {
		return nil, nil
	}
	switch k := pv.Kind.(type) {
	case nil, *structpb.Value_NullValue:
		return nil, nil
	case *structpb.Value_BoolValue:
		return k.BoolValue, nil
	case *structpb.Value_StringValue:
		return k.StringValue, nil
	case *structpb.Value_NumberValue:
		f := k.NumberValue
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("number %v is not JSON", f)
		}
		if f == math.Trunc(f) && math.Abs(f) <= 1<<53 {
			return value.Int(int64(f)), nil
		}
		return value.Float(f), nil
	case *structpb.Value_ListValue:
		vals := k.ListValue.GetValues()
		out := make([]value.Value, len(vals))
		for i, e := range vals {
			v, err := fromProtoDepth(e, depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	case *structpb.Value_StructValue:
		return fromStruct(k.StructValue, depth)
	default:
		return nil, fmt.Errorf("unknown protobuf Value kind %T", k)
	}
}

func fromStruct(s *structpb.Struct, depth int) (*value.Object, error) {
	fields := s.GetFields()
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	o := value.NewObject(len(keys))
	for _, k := range keys {
		v, err := fromProtoDepth(fields[k], depth+1)
		if err != nil {
			return nil, err
		}
		o.Set(k, v)
	}
	return o, nil
}

// executionStatus maps a run or item status of package runs.
func executionStatus(s string) tasksv1.ExecutionStatus {
	switch s {
	case runs.StatusRunning:
		return tasksv1.ExecutionStatus_EXECUTION_STATUS_RUNNING
	case runs.StatusCompleted:
		return tasksv1.ExecutionStatus_EXECUTION_STATUS_COMPLETED
	case runs.StatusFailed:
		return tasksv1.ExecutionStatus_EXECUTION_STATUS_FAILED
	case runs.StatusCancelled:
		return tasksv1.ExecutionStatus_EXECUTION_STATUS_CANCELLED
	}
	return tasksv1.ExecutionStatus_EXECUTION_STATUS_UNSPECIFIED
}

func u32(n int) uint32 {
	if n < 0 {
		return 0
	}
	if n > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(n)
}

// runStatus converts a run status for SubmitRun and GetRun. root is the
// root run id the worker named ("" = the run itself).
func runStatus(st runs.Status, root string) (*tasksv1.OrchestratorRunStatus, error) {
	out := &tasksv1.OrchestratorRunStatus{
		RunId:  st.RunID,
		FlowId: st.FlowID,
		Status: executionStatus(st.Status),
		Items: &tasksv1.ItemStatistics{
			Total: u32(st.Items.Total), Completed: u32(st.Items.Completed), Running: u32(st.Items.Running),
			Failed: u32(st.Items.Failed), Cancelled: u32(st.Items.Cancelled),
		},
		RootRunId: root,
	}
	if out.RootRunId == "" {
		out.RootRunId = st.RunID
	}
	if st.FlowName != "" {
		out.FlowName = &st.FlowName
	}
	if st.ParentRunID != "" {
		out.ParentRunId = &st.ParentRunID
	}
	if !st.CreatedAt.IsZero() {
		out.CreatedAt = timestamppb.New(st.CreatedAt)
	}
	if !st.CompletedAt.IsZero() {
		out.CompletedAt = timestamppb.New(st.CompletedAt)
	}
	for _, r := range st.Results {
		ir := &tasksv1.ItemResult{ItemIndex: u32(r.Index), Status: executionStatus(r.Status)}
		if !r.CompletedAt.IsZero() {
			ir.CompletedAt = timestamppb.New(r.CompletedAt)
		}
		if r.Result != nil {
			if r.Result.Err != nil {
				ir.Status = tasksv1.ExecutionStatus_EXECUTION_STATUS_FAILED
				msg := r.Result.Err.Message
				code := tasksv1.TaskErrorCode_TASK_ERROR_CODE_COMPONENT_FAILED
				ir.ErrorMessage, ir.ErrorCode = &msg, &code
			} else {
				pv, err := toProto(r.Result.Value)
				if err != nil {
					return nil, fmt.Errorf("result of item %d: %w", r.Index, err)
				}
				ir.Output = pv
			}
		}
		out.Results = append(out.Results, ir)
	}
	return out, nil
}
