package cli

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// envDefaults reads the STEPFLOW_* variables that are the defaults of a
// command's flags. A malformed number, duration or boolean is remembered
// and reported by err as a usage error naming the variable, when the
// command runs (--help still works).
type envDefaults struct {
	lookup func(string) (string, bool)
	errs   []error
}

// lookupStr returns the variable when it is set, even to "" (for flags
// where "" means something, such as --host ""), else def.
func (e *envDefaults) lookupStr(key, def string) string {
	if v, ok := e.lookup(key); ok {
		return v
	}
	return def
}

// str returns the variable unless it is unset or empty, else def.
func (e *envDefaults) str(key, def string) string {
	if v, ok := e.lookup(key); ok && v != "" {
		return v
	}
	return def
}

func (e *envDefaults) int64(key string, def int64) int64 {
	v := e.str(key, "")
	if v == "" {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s=%q is not an integer", key, v))
		return def
	}
	return n
}

func (e *envDefaults) integer(key string, def int) int {
	return int(e.int64(key, int64(def)))
}

func (e *envDefaults) duration(key string, def time.Duration) time.Duration {
	v := e.str(key, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s=%q is not a duration (such as 30s)", key, v))
		return def
	}
	return d
}

func (e *envDefaults) boolean(key string, def bool) bool {
	v := e.str(key, "")
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s=%q is not true or false", key, v))
		return def
	}
	return b
}

// err is the usage error of the malformed variables, nil when none.
func (e *envDefaults) err() error {
	if err := errors.Join(e.errs...); err != nil {
		return &ExitError{Code: ExitUsage, Err: err}
	}
	return nil
}
