package coordinator_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestComponentsFromWorkerRegistry: GET /components lists what the live
// workers publish in the worker registry, builtins with their schemas,
// in upstream's ListComponentsResponse shape; with no worker it is an
// empty list with a note saying why.
func TestComponentsFromWorkerRegistry(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, nil)
	cl := newClient(t, c)

	r := cl.get("/components")
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	empty := r.JSON(t)
	require.Equal(t, []any{}, empty["components"])
	require.Contains(t, empty["note"], "no live worker")

	w1 := startRealWorker(t, c, "w1", 2, newGates())
	w2 := startRealWorker(t, c, "w2", 2, newGates()) // the same components: listed once

	r = cl.get("/components")
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	body := r.JSON(t)
	require.NotContains(t, body, "note")
	require.NotContains(t, body, "incomplete")
	comps := body["components"].([]any)
	byPath := map[string]map[string]any{}
	var paths []string
	for _, ci := range comps {
		m := ci.(map[string]any)
		paths = append(paths, m["component"].(string))
		byPath[m["component"].(string)] = m
	}
	require.Equal(t, []string{
		"/builtin/create_messages", "/builtin/eval", "/builtin/get_blob", "/builtin/iterate", "/builtin/load_file",
		"/builtin/map", "/builtin/openai", "/builtin/put_blob", "/test/boom", "/test/hold",
	}, paths, "every routed component once, sorted")
	put := byPath["/builtin/put_blob"]
	require.NotEmpty(t, put["description"])
	in := put["input_schema"].(map[string]any)
	require.Contains(t, in["properties"], "data")
	require.NotNil(t, put["output_schema"])
	require.NotContains(t, byPath["/test/hold"], "input_schema", "the test plugin gives no schemas")

	r = cl.get("/components?includeSchemas=false")
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	for _, ci := range r.JSON(t)["components"].([]any) {
		m := ci.(map[string]any)
		require.NotContains(t, m, "input_schema")
		require.NotContains(t, m, "output_schema")
	}
	require.Equal(t, http.StatusBadRequest, cl.get("/components?includeSchemas=maybe").Status)

	// A worker that stops leaves the registry; the other still lists them.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, w1.Stop(ctx))
	r = cl.get("/components")
	require.Len(t, r.JSON(t)["components"], len(paths))
	require.NoError(t, w2.Stop(ctx))
	r = cl.get("/components")
	require.Equal(t, []any{}, r.JSON(t)["components"])
	require.Contains(t, r.JSON(t)["note"], "no live worker")
}
