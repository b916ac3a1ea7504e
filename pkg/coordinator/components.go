package coordinator

import (
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// handleComponents answers GET /api/v1/components with upstream's
// ListComponentsResponse: {"components":[ComponentInfo…]}, each
// {"component","description"?,"input_schema"?,"output_schema"?}, sorted
// by component. The coordinator runs no component: the list is what the
// live workers of the registry published (WorkerStatus.components), merged
// by component path, the first worker (by id) that gives a path's schemas
// providing them. Workers whose heartbeat is stale are left out.
//
// Differences from upstream, which lists its own plugins: "component" is
// the path a flow uses (/builtin/eval), not the plugin-local name
// (/eval), since the fleet's configs may differ and names of different
// plugins would collide; a component no route reaches is not listed
// (no flow can run it). ?includeSchemas=false (default true) leaves the
// schemas out.
//
// When the list is empty, "note" says why (no live worker, or none has
// listed its components yet); "incomplete" names the workers whose list
// is partial (a plugin could not be listed, or the list was cut to fit
// the registry: queue.MaxComponentsBytes).
func (c *Coordinator) handleComponents(w http.ResponseWriter, r *http.Request) {
	withSchemas := true
	switch v := r.URL.Query().Get("includeSchemas"); v {
	case "", "true":
	case "false":
		withSchemas = false
	default:
		c.writeError(w, r, errorf(ErrInvalidRequest, "includeSchemas must be true or false, not %q", v))
		return
	}
	entries, err := queue.ListWorkers(r.Context(), c.js)
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	var live []*stepflowv1.WorkerStatus
	for _, wv := range workerViews(entries, time.Now()) {
		if !wv.stale {
			live = append(live, wv.st)
		}
	}
	list, incomplete, listed := mergeComponents(live, withSchemas)
	out := value.ObjectOf("components", list)
	switch {
	case len(live) == 0:
		out.Set("note", "no live worker is registered: the components are those of the workers' "+
			"component servers (their stepflow-config.yml), which each worker publishes in the worker registry when it starts")
	case listed == 0:
		out.Set("note", "the live workers have not listed their components yet")
	case len(list) == 0:
		out.Set("note", "the live workers' routes reach no component")
	}
	if len(incomplete) > 0 {
		out.Set("incomplete", incomplete)
	}
	writeJSON(w, http.StatusOK, out)
}

// mergeComponents merges the workers' component lists (workers in id
// order) by path, sorted by path. incomplete has one {"workerId",
// "reason"} per worker whose list is partial; listed counts the workers
// that have listed their components.
func mergeComponents(workers []*stepflowv1.WorkerStatus, withSchemas bool) (list, incomplete []value.Value, listed int) {
	byPath := map[string]*stepflowv1.WorkerComponent{}
	for _, st := range workers {
		if st.GetComponentsListed() {
			listed++
		}
		var why []string
		if e := st.GetComponentsError(); e != "" {
			why = append(why, e)
		}
		if st.GetComponentsSchemasOmitted() {
			why = append(why, "schemas left out to fit the worker registry")
		}
		if st.GetComponentsTruncated() {
			why = append(why, "components left out to fit the worker registry")
		}
		if len(why) > 0 {
			incomplete = append(incomplete, value.ObjectOf("workerId", st.GetWorkerId(), "reason", strings.Join(why, "; ")))
		}
		for _, wc := range st.GetComponents() {
			prev, ok := byPath[wc.GetPath()]
			if !ok || (len(prev.GetInputSchema()) == 0 && len(prev.GetOutputSchema()) == 0 &&
				(len(wc.GetInputSchema()) > 0 || len(wc.GetOutputSchema()) > 0)) {
				byPath[wc.GetPath()] = wc
			}
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	list = make([]value.Value, 0, len(paths))
	for _, p := range paths {
		wc := byPath[p]
		o := value.ObjectOf("component", p)
		if d := wc.GetDescription(); d != "" {
			o.Set("description", d)
		}
		if withSchemas {
			if v := schemaValue(wc.GetInputSchema()); v != nil {
				o.Set("input_schema", v)
			}
			if v := schemaValue(wc.GetOutputSchema()); v != nil {
				o.Set("output_schema", v)
			}
		}
		list = append(list, o)
	}
	return list, incomplete, listed
}

// schemaValue parses a schema a worker sent; nil when absent or not JSON.
func schemaValue(raw []byte) value.Value {
	if len(raw) == 0 {
		return nil
	}
	v, err := value.Parse(raw)
	if err != nil {
		return nil
	}
	return v
}
