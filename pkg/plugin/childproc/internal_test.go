package childproc

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestReadLines(t *testing.T) {
	long := strings.Repeat("x", MaxLogLine+10)
	var got []string
	readLines(strings.NewReader("a\r\n\nb\n"+long+"\nlast"), func(l string) { got = append(got, l) })
	require.Len(t, got, 5)
	require.Equal(t, []string{"a", "", "b"}, got[:3])
	require.True(t, strings.HasSuffix(got[3], "… (10 more bytes)"))
	require.Len(t, got[3], MaxLogLine+len("… (10 more bytes)"))
	require.Equal(t, "last", got[4])
}
