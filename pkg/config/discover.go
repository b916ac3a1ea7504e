package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// FileNames are the config file names Discover looks for, in order.
var FileNames = []string{"stepflow-config.yml", "stepflow-config.yaml", "stepflow_config.yml", "stepflow_config.yaml"}

// Discover finds the config file to use:
//
//  1. explicit, when not "" (it must exist);
//  2. else one of FileNames in flowDir (when not "");
//  3. else one of FileNames in cwd (when not "").
//
// More than one of the names in the same directory is an error wrapping
// ErrMultipleConfigs (`multiple stepflow config files found in DIR: a,
// b`). It returns "" when there is none: use Default().
func Discover(explicit, flowDir, cwd string) (string, error) {
	if explicit != "" {
		st, err := os.Stat(explicit)
		if err != nil {
			return "", fmt.Errorf("config file %s: %w", explicit, err)
		}
		if st.IsDir() {
			return "", fmt.Errorf("config file %s is a directory", explicit)
		}
		return explicit, nil
	}
	for _, dir := range []string{flowDir, cwd} {
		if dir == "" {
			continue
		}
		p, err := findIn(dir)
		if err != nil || p != "" {
			return p, err
		}
	}
	return "", nil
}

// findIn returns the config file in dir, "" when there is none.
func findIn(dir string) (string, error) {
	var found []string
	for _, name := range FileNames {
		st, err := os.Stat(filepath.Join(dir, name))
		switch {
		case err == nil && !st.IsDir():
			found = append(found, name)
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			return "", fmt.Errorf("look for stepflow config in %s: %w", dir, err)
		}
	}
	switch len(found) {
	case 0:
		return "", nil
	case 1:
		return filepath.Join(dir, found[0]), nil
	default:
		return "", fmt.Errorf("%w in %s: %s", ErrMultipleConfigs, dir, strings.Join(found, ", "))
	}
}
