package logging

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNew(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log, err := New("info", "json", &buf)
	require.NoError(t, err)
	log.Debug("hidden")
	log.Info("shown")
	require.NotContains(t, buf.String(), "hidden")
	require.True(t, strings.HasPrefix(buf.String(), `{"level":"info"`), buf.String())

	buf.Reset()
	log, err = New("debug", "text", &buf)
	require.NoError(t, err)
	log.Debug("line")
	require.Contains(t, buf.String(), "DEBUG\tline")

	_, err = New("loud", "text", &buf)
	require.ErrorIs(t, err, ErrInvalid)
	_, err = New("info", "xml", &buf)
	require.ErrorIs(t, err, ErrInvalid)
}
