package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
)

// bigItemFlow stores its input as a blob, reads it back and returns it:
// an item's input and its result are both as large as the item.
const bigItemFlow = `name: big-item
schemas:
  type: object
  properties:
    input:
      type: object
      properties: { name: { type: string }, payload: { type: string } }
      required: [name]
steps:
  - id: keep
    component: /builtin/put_blob
    input: { data: { $input: "$" }, blob_type: data }
  - id: back
    component: /builtin/get_blob
    input: { blob_id: { $step: keep, path: blob_id } }
output:
  name: { $input: name }
  echo: { $step: back, path: data }
`

// An item twice the NATS max payload (the server default, 1 MiB) goes
// through the whole distributed path, coordinator and worker processes:
// its input and its result travel through the object store (a message
// carries the blob id instead), and the result is the one `stepflow
// run` gives. Its neighbours, one of them failing the input schema, are
// not affected.
func TestItemLargerThanMaxPayload(t *testing.T) {
	skipShort(t)
	t.Parallel()
	c := newCluster(t)
	c.addWorker(2, "")

	nc, err := nats.Connect(c.natsURL)
	require.NoError(t, err)
	maxPayload := nc.MaxPayload()
	nc.Close()
	require.EqualValues(t, 1<<20, maxPayload, "the server default")

	dir := t.TempDir()
	flowPath := filepath.Join(dir, "flow.yaml")
	require.NoError(t, os.WriteFile(flowPath, []byte(bigItemFlow), 0o644))
	payload := strings.Repeat("0123456789abcdef", (2<<20)/16) // 2 MiB
	inputs := fmt.Sprintf("{\"name\":\"small\"}\n{\"name\":\"big\",\"payload\":%q}\n{\"nom\":\"bad\"}\n{\"name\":\"after\"}\n", payload)
	itemsPath := filepath.Join(dir, "items.jsonl")
	require.NoError(t, os.WriteFile(itemsPath, []byte(inputs), 0o644))

	remote := c.submit(t, 3, "--flow", flowPath, "--inputs", itemsPath, "--max-concurrent", "4")
	local := runExample(t, 3, stepflowBin, "run", "--quiet", "--flow", flowPath, "--inputs", itemsPath)
	require.Equal(t, local, remote)

	got := lines(remote)
	require.Len(t, got, 4)
	require.Equal(t, `{"outcome":"success","result":{"name":"small","echo":{"name":"small"}}}`, got[0])
	require.Equal(t, fmt.Sprintf(`{"outcome":"success","result":{"name":"big","echo":{"name":"big","payload":%q}}}`, payload), got[1])
	require.Greater(t, len(got[1]), 2<<20)
	require.Equal(t, `{"outcome":"failed","error":{"code":400,"message":"input does not match the flow's input schema: $: missing property 'name'"}}`, got[2])
	require.Equal(t, `{"outcome":"success","result":{"name":"after","echo":{"name":"after"}}}`, got[3])
}
