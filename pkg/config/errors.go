package config

import (
	"errors"

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

// Error is a config problem with its place: `file:line:col: msg`.
type Error = value.PlacedError
