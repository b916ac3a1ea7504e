package coordinator

// Ready is the first line the coordinator command (`stepflow coordinator`,
// bin/coordinator) and `stepflow serve` write on stdout once the
// coordinator listens, as one JSON object:
// {"port":N,"natsUrl":"nats://127.0.0.1:M"}. Scripts and tests read it to
// learn the ports chosen for --port 0 and --nats-port 0.
type Ready struct {
	Port    int    `json:"port"`
	NATSURL string `json:"natsUrl"`
	// TLS is true when the REST API is served over HTTPS; omitted
	// otherwise, so the line is unchanged for plain HTTP.
	TLS bool `json:"tls,omitempty"`
}
