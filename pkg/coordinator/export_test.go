package coordinator

import stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"

// ReplayBlobJournal replays the blob journal now (as after an unclean
// stop).
func (c *Coordinator) ReplayBlobJournal() { c.replayJournal() }

// JournaledBlobs returns the ids of the blobs in the journal.
func (c *Coordinator) JournaledBlobs() (map[string]bool, error) {
	ids := map[string]bool{}
	err := c.journal.replay(func(b *stepflowv1.Blob) error {
		ids[b.GetId()] = true
		return nil
	})
	return ids, err
}
