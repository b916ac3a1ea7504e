package config_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/config"
)

func TestSubstitute(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"HOME": "/home/u", "EMPTY": "", "A_1": "x"}
	lookup := func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	tests := []struct{ in, want, err string }{
		{"plain", "plain", ""},
		{"$HOME/x", "/home/u/x", ""},
		{"${HOME}x", "/home/ux", ""},
		{"${A_1}", "x", ""},
		{"${EMPTY:-d}", "", ""}, // set (even empty) wins, as in subst
		{"${NOPE:-info}", "info", ""},
		{"${NOPE:info}", "info", ""},
		{"${NOPE:}", "", ""},
		{"${NOPE:-}", "", ""},
		{"${NOPE:${HOME}/.config}", "/home/u/.config", ""},
		{"${NOPE:$HOME}", "/home/u", ""},
		{"${HOME:${NOPE}}", "/home/u", ""}, // default not evaluated when set
		{`\$HOME`, "$HOME", ""},
		{`a\\b`, `a\b`, ""},
		{`${NOPE:a\}b}`, "a}b", ""},
		{`C:\path`, `C:\path`, ""},
		{"cost $5", "cost $5", ""}, // digits form a name: $5 is a variable
		{"50$", "50$", ""},
		{"$ x", "$ x", ""},
		{"$NOPE", "", `environment variable "NOPE" is not set (write ${NOPE:-default} to give a default)`},
		{"${NOPE}", "", `environment variable "NOPE" is not set (write ${NOPE:-default} to give a default)`},
		{"${HOME", "", `unterminated ${HOME in "${HOME"`},
		{"${NOPE:abc", "", `unterminated ${…} in "${NOPE:abc"`},
		{"${}", "", `missing variable name after ${ at offset 0 in "${}"`},
		{"${HO-ME}", "", `invalid character '-' in ${HO…} in "${HO-ME}" (expected } or :)`},
	}
	for _, tc := range tests {
		got, err := config.Substitute(tc.in, lookup)
		if tc.in == "cost $5" {
			// $5 is a (unset) variable name in subst's syntax.
			require.ErrorIs(t, err, config.ErrUnsetVariable)
			continue
		}
		if tc.err != "" {
			require.EqualError(t, err, tc.err, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
	}
}
