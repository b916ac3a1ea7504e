package coordinator

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// maxIdempotencyKeyLen bounds an Idempotency-Key header.
const maxIdempotencyKeyLen = 255

// idempotencyKeys maps Idempotency-Key headers to run ids: one file per
// key in DataDir/idempotency, named by the SHA-256 of the key and holding
// the run id. A claim is an atomic link(2) of a fully written temporary
// file, so the first request with a key wins and no reader ever sees a
// half-written claim. Keys live as long as their run: DELETE /runs/{id}
// releases the run's key, and so does a submission that fails before its
// run exists.
type idempotencyKeys struct {
	dir string
}

// validateIdempotencyKey checks a header value.
func validateIdempotencyKey(key string) error {
	if len(key) > maxIdempotencyKeyLen {
		return errorf(ErrInvalidRequest, "Idempotency-Key longer than %d characters", maxIdempotencyKeyLen)
	}
	if strings.TrimSpace(key) == "" {
		return errorf(ErrInvalidRequest, "empty Idempotency-Key")
	}
	return nil
}

// keyHash is the file name of key.
func keyHash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// claim maps the key with hash h to runID unless it is mapped already;
// it returns the run id the key maps to and whether this call claimed it.
func (k idempotencyKeys) claim(h, runID string) (string, bool, error) {
	if err := os.MkdirAll(k.dir, 0o750); err != nil {
		return "", false, fmt.Errorf("coordinator: idempotency keys: %w", err)
	}
	final := filepath.Join(k.dir, h)
	tmp, err := os.CreateTemp(k.dir, ".claim-*")
	if err != nil {
		return "", false, fmt.Errorf("coordinator: idempotency keys: %w", err)
	}
	_, werr := tmp.WriteString(runID)
	cerr := tmp.Close()
	defer os.Remove(tmp.Name())
	if err := errors.Join(werr, cerr); err != nil {
		return "", false, fmt.Errorf("coordinator: idempotency keys: %w", err)
	}
	if err := os.Link(tmp.Name(), final); err == nil {
		return runID, true, nil
	} else if !errors.Is(err, os.ErrExist) {
		return "", false, fmt.Errorf("coordinator: idempotency keys: %w", err)
	}
	b, err := os.ReadFile(final)
	if err != nil {
		return "", false, fmt.Errorf("coordinator: idempotency keys: %w", err)
	}
	return string(b), false, nil
}

// release removes the key with hash h if it still maps to runID.
func (k idempotencyKeys) release(h, runID string) error {
	if h == "" {
		return nil
	}
	final := filepath.Join(k.dir, h)
	b, err := os.ReadFile(final)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("coordinator: idempotency keys: %w", err)
	}
	if string(b) != runID {
		return nil
	}
	if err := os.Remove(final); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("coordinator: idempotency keys: %w", err)
	}
	return nil
}
