package outcome

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestJSONForms(t *testing.T) {
	t.Parallel()
	for _, r := range []Result{
		Success(value.MustParse(`{"a":[1,2.0]}`)),
		Success(nil),
		Failure(&Error{Code: 8, Message: "error"}),
		Failure(&Error{Code: 500, Message: `step "x" failed`, Data: value.MustParse(`{"stack":[]}`)}),
	} {
		require.Equal(t, value.String(r.JSON()), string(r.AppendJSON(nil)))
		back, err := Parse(r.JSON())
		require.NoError(t, err)
		require.Equal(t, value.String(r.JSON()), value.String(back.JSON()))
	}
	require.Equal(t, `{"outcome":"success","result":null}`, string(Success(nil).AppendJSON(nil)))
}

func TestParseRejects(t *testing.T) {
	t.Parallel()
	for _, s := range []string{`1`, `{"outcome":"skipped"}`, `{"outcome":"failed"}`, `{"outcome":"failed","error":{"code":"x"}}`, `{"outcome":"failed","error":{"code":1.5}}`} {
		_, err := Parse(value.MustParse(s))
		require.ErrorIs(t, err, ErrNotResult, s)
	}
}
