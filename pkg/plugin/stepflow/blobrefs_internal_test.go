package stepflow

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestResolveBlobRefs(t *testing.T) {
	ctx := context.Background()
	store := blob.NewMemory()
	put := func(s string) string {
		id, err := store.Put(ctx, blob.KindData, value.MustParse(s))
		require.NoError(t, err)
		return id
	}
	big := put(`{"text":"long"}`)
	list := put(`[1,2,3]`)
	outer := put(`{"inner":{"$blob":"` + list + `"}}`) // a blob holding a reference

	in := value.MustParse(`{"a":1,"big":{"$blob":"` + big + `","size":15},"xs":[{"$blob":"` + list + `","blobType":"data"},4],"o":{"$blob":"` + outer + `"}}`)
	before := value.String(in)
	out, err := resolveBlobRefs(ctx, store, in)
	require.NoError(t, err)
	require.Equal(t, `{"a":1,"big":{"text":"long"},"xs":[[1,2,3],4],"o":{"inner":[1,2,3]}}`, value.String(out))
	require.Equal(t, before, value.String(in), "the output is not modified in place")

	// Without references the value is returned as is; objects that only
	// look alike are data.
	for _, s := range []string{`{"a":[1,{"b":null}]}`, `{"$blob":"short"}`, `{"$blob":7}`, `{"$blob":"` + strings.ToUpper(big) + `"}`, `"x"`, `null`} {
		v := value.MustParse(s)
		got, err := resolveBlobRefs(ctx, store, v)
		require.NoError(t, err, s)
		require.Equal(t, s, value.String(got))
	}

	missing := strings.Repeat("0", 64)
	_, err = resolveBlobRefs(ctx, store, value.MustParse(`{"x":[{"$blob":"`+missing+`"}]}`))
	require.ErrorIs(t, err, ErrBlobRef)
	require.ErrorIs(t, err, blob.ErrNotFound)
	require.ErrorContains(t, err, missing)

	// A chain of references deeper than the bound fails instead of
	// looping.
	id := put(`"end"`)
	for range maxBlobRefDepth {
		id = put(`{"$blob":"` + id + `"}`)
	}
	_, err = resolveBlobRefs(ctx, store, value.MustParse(`{"$blob":"`+id+`"}`))
	require.ErrorIs(t, err, ErrBlobRef)
	require.ErrorContains(t, err, "nested more than 8 deep")
}

func TestLoopbackURL(t *testing.T) {
	for u, want := range map[string]bool{
		"http://127.0.0.1:8080":        true,
		"http://127.3.2.1/x":           true,
		"http://[::1]:9000":            true,
		"http://localhost:9000/":       true,
		"http://10.0.0.5:8080":         false,
		"http://components.example:80": false,
		"://bad":                       false,
	} {
		require.Equal(t, want, loopbackURL(u), u)
	}
}
