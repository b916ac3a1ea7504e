package config

import (
	"errors"
	"strconv"
	"strings"

	"github.com/stepflow-go/stepflow/pkg/value"
)

var (
	// ErrInvalidConfig is wrapped by every error about the content of a
	// config document (syntax, types, unknown plugin types, bad patterns
	// of conditions), as opposed to I/O errors.
	ErrInvalidConfig = errors.New("invalid stepflow config")
	// ErrUnsetVariable is wrapped by substitution errors for a variable
	// that is not set and has no default.
	ErrUnsetVariable = errors.New("environment variable not set")
	// ErrMultipleConfigs is wrapped by Discover when a directory holds more
	// than one config file name.
	ErrMultipleConfigs = errors.New("multiple stepflow config files found")
	// ErrTooLarge is returned for documents larger than MaxConfigBytes.
	ErrTooLarge = errors.New("config document too large")
)

// MaxConfigBytes bounds the size of a config document.
const MaxConfigBytes = 16 << 20

// Error is a problem in a config document, with its place when known.
type Error struct {
	File string    // "" when the config did not come from a file
	Pos  value.Pos // zero when unknown; Col is 0 when only the line is known
	Path string    // JSON path of the offending value, "" when unknown
	Msg  string
	Err  error // the cause; wraps ErrInvalidConfig for content problems
}

// Error returns `file:line:col: msg`, leaving out what is not known.
// Without a position, the JSON path stands in for it.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if !e.Pos.IsZero() {
		if b.Len() > 0 {
			b.WriteByte(':')
		}
		b.WriteString(strconv.Itoa(e.Pos.Line))
		if e.Pos.Col > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Pos.Col))
		}
	} else if e.Path != "" {
		if b.Len() > 0 {
			b.WriteString(": ")
		}
		b.WriteString(e.Path)
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }
