package worker

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// Component listing settings.
const (
	// componentsRefresh is how often every plugin is listed again, which
	// catches a component server that restarted (with other components)
	// between two heartbeats.
	componentsRefresh = 5 * time.Minute
	// componentsTimeout bounds the listing of the plugins at one
	// heartbeat.
	componentsTimeout = 5 * time.Second
)

// catalogue is the component list a worker publishes in its
// WorkerStatus, for the coordinator's GET /api/v1/components. It lists
// every plugin when the worker starts, and again a plugin whose listing
// failed (at the next heartbeat), one whose component server came back
// up, and all of them every componentsRefresh; a plugin whose listing
// fails keeps its last list. Only the announcer's goroutine uses it.
type catalogue struct {
	plugins *plugin.Plugins
	log     *zap.Logger
	limit   int

	lists    map[string][]plugin.ComponentInfo // last good list per plugin
	errs     map[string]error                  // plugins whose last listing failed
	down     map[string]bool                   // plugins unhealthy at the last look
	listedAt time.Time                         // the last listing of every plugin

	// What status publishes, rebuilt when a listing changed something.
	components     []*stepflowv1.WorkerComponent
	listed         bool
	schemasOmitted bool
	truncated      bool
	errMsg         string
}

func newCatalogue(ps *plugin.Plugins, log *zap.Logger, limit int) *catalogue {
	return &catalogue{plugins: ps, log: log, limit: limit,
		lists: map[string][]plugin.ComponentInfo{}, errs: map[string]error{}, down: map[string]bool{}}
}

// refresh lists the plugins that are due (see catalogue).
func (c *catalogue) refresh(ctx context.Context, now time.Time) {
	health := map[string]error{}
	for _, h := range c.plugins.Health() {
		health[h.Plugin] = h.Err
	}
	all := c.listedAt.IsZero() || now.Sub(c.listedAt) >= componentsRefresh
	changed := false
	for _, name := range c.plugins.Names() {
		down := health[name] != nil
		_, have := c.lists[name]
		cameUp := c.down[name] && !down
		c.down[name] = down
		if have && c.errs[name] == nil && !cameUp && !all {
			continue
		}
		changed = true
		if down {
			// Listing a server that is restarting would wait for it.
			c.errs[name] = health[name]
			continue
		}
		infos, err := c.plugins.ListPlugin(ctx, name)
		if err != nil {
			if c.errs[name] == nil {
				c.log.Warn("cannot list a plugin's components; retrying at the next heartbeat", zap.String("plugin", name), zap.Error(err))
			}
			c.errs[name] = err
			continue
		}
		c.lists[name] = infos
		delete(c.errs, name)
	}
	if all {
		c.listedAt = now
	}
	if changed {
		c.rebuild()
	}
}

// rebuild makes the published list: one entry per component path the
// routes reach, the first plugin (config order) winning a path, sorted
// by path, and bounded by limit.
func (c *catalogue) rebuild() {
	seen := map[string]bool{}
	var out []*stepflowv1.WorkerComponent
	var errs []error
	for _, name := range c.plugins.Names() {
		if err := c.errs[name]; err != nil {
			errs = append(errs, err)
		}
		for _, info := range c.lists[name] {
			for _, r := range info.Routes {
				if seen[r.ResolvedPath] {
					continue
				}
				seen[r.ResolvedPath] = true
				wc := &stepflowv1.WorkerComponent{Path: r.ResolvedPath, Description: info.Description, Plugin: name}
				if info.InputSchema != nil {
					wc.InputSchema = value.Marshal(info.InputSchema)
				}
				if info.OutputSchema != nil {
					wc.OutputSchema = value.Marshal(info.OutputSchema)
				}
				out = append(out, wc)
			}
		}
	}
	slices.SortFunc(out, func(a, b *stepflowv1.WorkerComponent) int { return strings.Compare(a.Path, b.Path) })
	c.components, c.schemasOmitted, c.truncated = fitComponents(out, c.limit)
	c.listed = len(c.lists) > 0
	c.errMsg = ""
	if err := errors.Join(errs...); err != nil {
		c.errMsg = truncate(err.Error(), 1024)
	}
}

// fitComponents bounds the encoded size of list to limit bytes: without
// schemas if they do not fit, then only the first components that do.
func fitComponents(list []*stepflowv1.WorkerComponent, limit int) (out []*stepflowv1.WorkerComponent, schemasOmitted, truncated bool) {
	size := func() int {
		n := 0
		for _, wc := range list {
			n += proto.Size(wc) + 4 // the field's tag and length
		}
		return n
	}
	if size() <= limit {
		return list, false, false
	}
	for _, wc := range list {
		if len(wc.InputSchema) > 0 || len(wc.OutputSchema) > 0 {
			schemasOmitted = true
		}
		wc.InputSchema, wc.OutputSchema = nil, nil
	}
	n := 0
	for i, wc := range list {
		n += proto.Size(wc) + 4
		if n > limit {
			return list[:i], schemasOmitted, true
		}
	}
	return list, schemasOmitted, false
}

// fill sets the component fields of st.
func (c *catalogue) fill(st *stepflowv1.WorkerStatus) {
	st.Components = c.components
	st.ComponentsListed = c.listed
	st.ComponentsSchemasOmitted = c.schemasOmitted
	st.ComponentsTruncated = c.truncated
	st.ComponentsError = c.errMsg
}
