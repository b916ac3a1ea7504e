package blobapi_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/plugin/blobapi"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start returns a started server over a fresh memory store.
func start(t *testing.T, opts blobapi.Options) (*blobapi.Server, *blob.Memory, string) {
	t.Helper()
	store := blob.NewMemory()
	s := blobapi.New(store, opts)
	u, err := s.URL()
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s, store, u
}

// do sends a request and returns the status and the parsed JSON body.
func do(t *testing.T, method, u, contentType, body string) (int, value.Value) {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	require.NoError(t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if method == http.MethodHead {
		return resp.StatusCode, nil
	}
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"), "%s", raw)
	v, err := value.ParseStrict(raw)
	require.NoError(t, err, "%s", raw)
	return resp.StatusCode, v
}

func get(t *testing.T, v value.Value, key string) value.Value {
	t.Helper()
	o, ok := v.(*value.Object)
	require.True(t, ok, "not an object: %s", value.String(v))
	f, ok := o.Get(key)
	require.True(t, ok, "no %q in %s", key, value.String(v))
	return f
}

func TestURLIsLoopbackUnderARandomPrefix(t *testing.T) {
	_, _, u := start(t, blobapi.Options{})
	pu, err := url.Parse(u)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", pu.Hostname())
	require.Regexp(t, `^/[0-9a-f]{32}/blobs$`, pu.Path)

	other := blobapi.New(blob.NewMemory(), blobapi.Options{})
	ou, err := other.URL()
	require.NoError(t, err)
	require.NoError(t, other.Close())
	opu, _ := url.Parse(ou)
	require.NotEqual(t, pu.Path, opu.Path, "the prefix is random per server")

	// The same store without the prefix: 404.
	status, body := do(t, http.MethodPost, "http://"+pu.Host+"/blobs", "application/json", `{"data":1}`)
	require.Equal(t, http.StatusNotFound, status)
	require.Equal(t, "not found", get(t, body, "message"))
}

func TestPutGetShareTheStore(t *testing.T) {
	_, store, u := start(t, blobapi.Options{})

	status, body := do(t, http.MethodPost, u, "application/json", `{"data":{"b":[1,2],"a":"x"},"blobType":"data"}`)
	require.Equal(t, http.StatusOK, status, value.String(body))
	id := get(t, body, "blobId").(string)
	require.Equal(t, blob.ID(value.MustParse(`{"b":[1,2],"a":"x"}`)), id, "the id is the content's SHA-256, as the builtins compute it")

	b, err := store.Get(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, blob.KindData, b.Kind)

	status, body = do(t, http.MethodGet, u+"/"+id, "", "")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, `{"blobId":"`+id+`","blobType":"data","data":{"b":[1,2],"a":"x"}}`, value.String(body))

	// What the store holds from elsewhere (/builtin/put_blob) is served too;
	// blobType absent or null means data.
	other, err := store.Put(context.Background(), blob.KindData, value.MustParse(`[null,true]`))
	require.NoError(t, err)
	status, body = do(t, http.MethodGet, u+"/"+other, "", "")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, `[null,true]`, value.String(get(t, body, "data")))
	status, body = do(t, http.MethodPost, u, "application/json; charset=utf-8", `{"data":null,"blobType":null}`)
	require.Equal(t, http.StatusOK, status, value.String(body))
	require.Equal(t, blob.ID(nil), get(t, body, "blobId"))

	status, _ = do(t, http.MethodHead, u+"/"+id, "", "")
	require.Equal(t, http.StatusOK, status)
}

func TestFlowBlobIDIsTheFlowID(t *testing.T) {
	_, store, u := start(t, blobapi.Options{})
	const flowJSON = `{"steps":[{"id":"s","component":"/builtin/eval","input":{"x":{"$input":"x"}}}],"name":"f","output":{"$step":"s"}}`
	f, err := flow.Parse([]byte(flowJSON), "")
	require.NoError(t, err)
	status, body := do(t, http.MethodPost, u, "application/json", `{"data":`+flowJSON+`,"blobType":"flow"}`)
	require.Equal(t, http.StatusOK, status, value.String(body))
	require.Equal(t, f.ID(), get(t, body, "blobId"))
	b, err := store.Get(context.Background(), f.ID())
	require.NoError(t, err)
	require.Equal(t, blob.KindFlow, b.Kind)

	status, body = do(t, http.MethodPost, u, "application/json", `{"data":{"steps":"nope"},"blobType":"flow"}`)
	require.Equal(t, http.StatusBadRequest, status)
	require.Contains(t, get(t, body, "message"), `"data" is not a valid flow`)
}

func TestErrors(t *testing.T) {
	_, _, u := start(t, blobapi.Options{MaxBodyBytes: 64})
	missing := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name, method, path, contentType, body string
		status                                int
		message                               string
	}{
		{"malformed JSON", "POST", "", "application/json", `{"data":`, 400, "malformed JSON body: "},
		{"duplicate key", "POST", "", "application/json", `{"data":1,"data":2}`, 400, "malformed JSON body: "},
		{"not an object", "POST", "", "application/json", `[1]`, 400, "the request body must be a JSON object, not array"},
		{"no data", "POST", "", "application/json", `{"blobType":"data"}`, 400, `the request body has no "data" field`},
		{"unknown blobType", "POST", "", "application/json", `{"data":1,"blobType":"binary"}`, 400, `"blobType" must be "data" or "flow", not "binary"`},
		{"blobType type", "POST", "", "application/json", `{"data":1,"blobType":7}`, 400, `"blobType" must be a string, not number`},
		{"too large", "POST", "", "application/json", `{"data":"` + strings.Repeat("x", 100) + `"}`, 413, "request body larger than 64 bytes"},
		{"binary", "POST", "", "application/octet-stream", "\x00\x01", 415, "binary blobs (application/octet-stream) are not supported"},
		{"text", "POST", "", "text/plain", `{"data":1}`, 415, "Content-Type must be application/json, not text/plain"},
		{"unknown id", "GET", "/" + missing, "", "", 404, "blob " + missing + " not found"},
		{"malformed id", "GET", "/xyz", "", "", 400, `invalid blob id "xyz" (expected 64 lowercase hex digits)`},
		{"deeper path", "GET", "/" + missing + "/x", "", "", 404, "not found"},
		{"GET the collection", "GET", "", "", "", 405, "method GET not allowed: POST stores a blob"},
		{"DELETE a blob", "DELETE", "/" + missing, "", "", 405, "method DELETE not allowed: GET reads a blob"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := do(t, tc.method, u+tc.path, tc.contentType, tc.body)
			require.Equal(t, tc.status, status, value.String(body))
			require.Equal(t, int64(tc.status), mustInt(t, get(t, body, "code")))
			require.Contains(t, get(t, body, "message"), tc.message)
		})
	}
}

func mustInt(t *testing.T, v value.Value) int64 {
	t.Helper()
	n, ok := v.(value.Number)
	require.True(t, ok)
	i, err := n.Int64()
	require.NoError(t, err)
	return i
}

func TestLifecycle(t *testing.T) {
	// Close before any URL call: nothing was started.
	s := blobapi.New(blob.NewMemory(), blobapi.Options{})
	require.NoError(t, s.Close())
	_, err := s.URL()
	require.ErrorIs(t, err, blobapi.ErrClosed)

	// URL starts once; Close stops the listener and is idempotent.
	s = blobapi.New(blob.NewMemory(), blobapi.Options{})
	u1, err := s.URL()
	require.NoError(t, err)
	u2, err := s.URL()
	require.NoError(t, err)
	require.Equal(t, u1, u2)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close())
	_, err = s.URL()
	require.ErrorIs(t, err, blobapi.ErrClosed)
	_, err = (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Post(u1, "application/json", strings.NewReader(`{"data":1}`))
	require.Error(t, err, "the listener is closed")
}
