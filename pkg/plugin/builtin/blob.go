package builtin

import (
	"context"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// putBlob implements /put_blob: {data, blob_type: data|flow} -> {blob_id}.
// A flow is stored in canonical form, so its id is the flow id.
func (p *Plugin) putBlob(ctx context.Context, req *executor.Request) (outcome.Result, error) {
	in, err := decodeInput(req.Input)
	if err != nil {
		return outcome.Result{}, err
	}
	data, err := in.reqAny("data")
	if err != nil {
		return outcome.Result{}, err
	}
	kind, err := in.reqString("blob_type")
	if err != nil {
		return outcome.Result{}, err
	}
	switch blob.Kind(kind) {
	case blob.KindData:
	case blob.KindFlow:
		f, err := flow.FromValue(data)
		if err != nil {
			return outcome.Result{}, internal(err, "data is not a valid flow")
		}
		data = f.Value()
	default:
		return outcome.Result{}, invalidInput("`blob_type`: expected \"data\" or \"flow\", got %q", kind)
	}
	id, err := p.host.Blobs.Put(ctx, blob.Kind(kind), data)
	if err != nil {
		return outcome.Result{}, internal(err, "storing blob")
	}
	return success(value.ObjectOf("blob_id", id))
}

// getBlob implements /get_blob: {blob_id} -> {data}.
func (p *Plugin) getBlob(ctx context.Context, req *executor.Request) (outcome.Result, error) {
	in, err := decodeInput(req.Input)
	if err != nil {
		return outcome.Result{}, err
	}
	id, err := in.reqString("blob_id")
	if err != nil {
		return outcome.Result{}, err
	}
	if !blob.ValidID(id) {
		return outcome.Result{}, invalidInput("invalid blob id %q (expected 64 lowercase hex digits)", id)
	}
	b, err := p.host.Blobs.Get(ctx, id)
	if err != nil {
		return outcome.Result{}, internal(err, "reading blob %s", id)
	}
	return success(value.ObjectOf("data", b.Data))
}
