package flow

import (
	"errors"
	"fmt"
	"slices"

	"github.com/stepflow-go/stepflow/pkg/value"
)

// OverrideType is how a step override is applied.
type OverrideType string

// Override types.
const (
	// OverrideMergePatch applies an RFC 7396 JSON Merge Patch (the
	// default).
	OverrideMergePatch OverrideType = "merge_patch"
	// OverrideJSONPatch is an RFC 6902 JSON Patch. Upstream accepts it in
	// override documents but cannot apply it; so does this package.
	OverrideJSONPatch OverrideType = "json_patch"
)

// Override errors.
var (
	// ErrInvalidOverrides is wrapped by ParseOverrides errors.
	ErrInvalidOverrides = errors.New("invalid overrides")
	// ErrStepNotFound is wrapped when an override names no step of the
	// flow.
	ErrStepNotFound = errors.New("step not found in workflow")
	// ErrUnsupportedOverride is wrapped when applying a json_patch
	// override.
	ErrUnsupportedOverride = errors.New("unsupported override type")
)

// StepOverride is the override of one step:
// `{"$type": "merge_patch", "value": {…}}`.
type StepOverride struct {
	Type  OverrideType // "" means merge_patch
	Value value.Value
}

// Overrides maps step ids to their overrides. An empty map means no
// overrides.
type Overrides map[string]StepOverride

// OverrideError is a failure to apply overrides to a flow.
type OverrideError struct {
	Step string // the step id of the override
	Msg  string
	Err  error // ErrStepNotFound, ErrUnsupportedOverride or a *DecodeError
}

// Error returns the message, e.g. `Step 'x' not found in workflow`.
func (e *OverrideError) Error() string { return e.Msg }

// Unwrap returns the cause.
func (e *OverrideError) Unwrap() error { return e.Err }

// ParseOverrides reads overrides from their JSON form: an object mapping
// step ids to `{"$type"?: "merge_patch"|"json_patch", "value": …}`. null
// is no overrides.
func ParseOverrides(v value.Value) (Overrides, error) {
	if v == nil {
		return Overrides{}, nil
	}
	o, ok := v.(*value.Object)
	if !ok {
		return nil, fmt.Errorf("%w: expected an object mapping step ids to overrides, got %s", ErrInvalidOverrides, value.TypeName(v))
	}
	out := make(Overrides, o.Len())
	for i := range o.Len() {
		id, sv := o.At(i)
		so, ok := sv.(*value.Object)
		if !ok {
			return nil, fmt.Errorf("%w: override of step '%s' must be an object, got %s", ErrInvalidOverrides, id, value.TypeName(sv))
		}
		ov := StepOverride{Type: OverrideMergePatch}
		if tv, ok := so.Get("$type"); ok {
			switch tv {
			case string(OverrideMergePatch):
			case string(OverrideJSONPatch):
				ov.Type = OverrideJSONPatch
			default:
				return nil, fmt.Errorf("%w: override of step '%s': unknown $type %s (expected \"merge_patch\" or \"json_patch\")",
					ErrInvalidOverrides, id, value.String(tv))
			}
		}
		val, ok := so.Get("value")
		if !ok {
			return nil, fmt.Errorf("%w: override of step '%s' has no `value`", ErrInvalidOverrides, id)
		}
		ov.Value = val
		out[id] = ov
	}
	return out, nil
}

// Value returns the JSON form of the overrides, step ids sorted.
func (o Overrides) Value() value.Value {
	ids := make([]string, 0, len(o))
	for id := range o {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := value.NewObject(len(ids))
	for _, id := range ids {
		so := o[id]
		t := so.Type
		if t == "" {
			t = OverrideMergePatch
		}
		out.Set(id, value.ObjectOf("$type", string(t), "value", so.Value))
	}
	return out
}

// ApplyOverrides returns a new flow in which every overridden step is the
// result of merge-patching the step's canonical JSON form (Step.Value)
// and decoding it again. f is not modified. Every override must name a
// step of f (`Step 'x' not found in workflow`), and json_patch overrides
// fail. With no overrides, f itself is returned. The new flow keeps f's
// File and Source; its ID is the hash of the patched content (a run
// records the id of the un-patched flow).
func (f *Flow) ApplyOverrides(o Overrides) (*Flow, error) {
	if len(o) == 0 {
		return f, nil
	}
	ids := make([]string, 0, len(o))
	for id := range o {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if f.StepIndex(id) < 0 {
			return nil, &OverrideError{Step: id, Err: ErrStepNotFound,
				Msg: fmt.Sprintf("Step '%s' not found in workflow", id)}
		}
		if t := o[id].Type; t != "" && t != OverrideMergePatch {
			return nil, &OverrideError{Step: id, Err: ErrUnsupportedOverride,
				Msg: fmt.Sprintf("Unsupported override type %s for step '%s'", t, id)}
		}
	}
	nf := *f
	nf.cache = &flowCache{}
	nf.Steps = make([]*Step, len(f.Steps))
	d := decoder{value.Fields{Kind: ErrInvalidFlow}}
	for i, s := range f.Steps {
		ov, ok := o[s.ID]
		if !ok {
			nf.Steps[i] = s
			continue
		}
		patched := MergePatch(s.Value(), ov.Value)
		ns, err := d.step(patched, stepPath(i, ""))
		if err != nil {
			return nil, &OverrideError{Step: s.ID, Err: err,
				Msg: fmt.Sprintf("invalid override for step '%s': %v", s.ID, err)}
		}
		nf.Steps[i] = ns
	}
	return &nf, nil
}

// MergePatch applies an RFC 7396 JSON Merge Patch: an object patch merges
// key by key into an object target (a null member deletes the key, other
// members are merged recursively; existing keys keep their position, new
// ones are appended); any other patch replaces the target. Neither
// argument is modified; the result may share unchanged parts with them.
func MergePatch(target, patch value.Value) value.Value {
	po, ok := patch.(*value.Object)
	if !ok {
		return patch
	}
	to, _ := target.(*value.Object)
	out := value.NewObject(to.Len() + po.Len())
	for i := range to.Len() {
		k, v := to.At(i)
		out.Set(k, v)
	}
	for i := range po.Len() {
		k, pv := po.At(i)
		if pv == nil {
			out.Delete(k)
			continue
		}
		cur, _ := out.Get(k)
		out.Set(k, MergePatch(cur, pv))
	}
	return out
}
