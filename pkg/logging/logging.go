// Package logging builds the zap loggers of the stepflow commands from
// their --log-level and --log-format flags, so that the CLI, the
// coordinator and the worker log alike. Libraries never build loggers:
// they get one injected.
package logging

import (
	"errors"
	"fmt"
	"io"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ErrInvalid is wrapped by errors about the level or the format.
var ErrInvalid = errors.New("invalid logging option")

// New returns a logger writing to w at level (debug, info, warn, error)
// in format: "text" (human-readable lines) or "json" (one object a line).
// Both carry ISO 8601 timestamps.
func New(level, format string, w io.Writer) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("%w: --log-level %q: want debug, info, warn or error", ErrInvalid, level)
	}
	var enc zapcore.Encoder
	switch format {
	case "text", "":
		cfg := zap.NewDevelopmentEncoderConfig()
		cfg.EncodeTime = zapcore.ISO8601TimeEncoder
		enc = zapcore.NewConsoleEncoder(cfg)
	case "json":
		cfg := zap.NewProductionEncoderConfig()
		cfg.EncodeTime = zapcore.ISO8601TimeEncoder
		enc = zapcore.NewJSONEncoder(cfg)
	default:
		return nil, fmt.Errorf("%w: --log-format %q: want text or json", ErrInvalid, format)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), lvl)), nil
}
