package grpcqueue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	sfqueue "github.com/stepflow-go/stepflow/pkg/queue"
)

// defaultConsumer is the SDK's default durable consumer name.
const defaultConsumer = "stepflow-default"

// publishTimeout bounds one publication (JetStream acknowledges it).
const publishTimeout = 30 * time.Second

// consumer is the durable consumer the launched worker uses.
func (p *Plugin) consumer() string {
	if c := p.cfg.nats.Consumer; c != "" {
		return c
	}
	return defaultConsumer
}

// redactURL hides the password of a NATS URL (nats://user:pass@host),
// for errors and logs.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	return u.Redacted()
}

// subject is where tasks of a stream are published (the SDK reads
// `<stream>.tasks`).
func subject(stream string) string { return stream + ".tasks" }

// startNATS connects to the NATS server, makes sure of the default
// stream (WorkQueue retention: one worker pool per stream, as upstream)
// and has the dispatcher publish tasks there. Completions, heartbeats,
// nested runs and blobs still reach this plugin's gRPC services.
func (p *Plugin) startNATS(ctx context.Context) error {
	n := p.cfg.nats
	// The worker's inbox prefix: the plugin's connection logs in as the
	// worker's user, which may read replies under that prefix only.
	connectURL, opts, err := p.natsLogin(n.URL)
	if err != nil {
		return err
	}
	nc, err := nats.Connect(connectURL, append(opts, nats.Name("stepflow plugin "+p.name), nats.MaxReconnects(-1))...)
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", redactURL(n.URL), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return fmt.Errorf("JetStream: %w", err)
	}
	p.nc, p.js = nc, js
	if p.cfg.queue != "" {
		if err := p.ensureStream(ctx, p.cfg.queue); err != nil {
			return err
		}
	}
	p.d.publish = p.publish
	return nil
}

// natsLogin returns the URL to connect to and the options of the
// plugin's connection: the worker's inbox prefix and, when the worker
// has an inbox key, the key's login (the callout that admits the worker
// admits the plugin's connection with the same key to the same prefix).
// nats.go sends no key next to credentials in the URL: they move to
// options then.
func (p *Plugin) natsLogin(urls string) (string, []nats.Option, error) {
	prefix := cmp.Or(p.host.NATSInboxPrefix, sfqueue.WorkerInboxPrefix)
	kp := p.host.NATSInboxKey
	if kp == nil {
		return urls, []nats.Option{nats.CustomInboxPrefix(prefix)}, nil
	}
	login, keyPrefix, err := sfqueue.InboxKeyLogin(kp, prefix)
	if err != nil {
		return "", nil, err
	}
	opts := []nats.Option{nats.CustomInboxPrefix(keyPrefix), login}
	parts := strings.Split(urls, ",")
	var user *url.Userinfo
	for i, part := range parts {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil || u.User == nil {
			continue
		}
		if user != nil && user.String() != u.User.String() {
			return "", nil, fmt.Errorf("NATS URL %s: the URLs name different credentials", sfqueue.RedactURL(urls))
		}
		user, u.User = u.User, nil
		parts[i] = u.String()
	}
	if user != nil {
		pw, ok := user.Password()
		if !ok {
			opts = append(opts, nats.Token(user.Username()))
		} else {
			opts = append(opts, nats.UserInfo(user.Username(), pw))
		}
	}
	return strings.Join(parts, ","), opts, nil
}

// ensureStream creates the stream when it does not exist yet.
func (p *Plugin) ensureStream(ctx context.Context, name string) error {
	if _, ok := p.streams.Load(name); ok {
		return nil
	}
	_, err := p.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:      name,
		Subjects:  []string{subject(name)},
		Retention: jetstream.WorkQueuePolicy,
	})
	if err != nil {
		return fmt.Errorf("JetStream stream %q: %w", name, err)
	}
	p.streams.Store(name, struct{}{})
	return nil
}

func (p *Plugin) publish(stream string, data []byte) error {
	if stream == "" {
		return fmt.Errorf("%w: no stream: set `stream` on the plugin or on the route rule", ErrConfig)
	}
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	if err := p.ensureStream(ctx, stream); err != nil {
		return err
	}
	if _, err := p.js.Publish(ctx, subject(stream), data); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	return nil
}

// consumerReady returns a channel closed once the launched worker's
// durable consumer exists on the default stream: the NATS worker's sign
// that it fetches tasks.
func (p *Plugin) consumerReady() <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := p.js.Consumer(ctx, p.cfg.queue, p.consumer())
			cancel()
			if err == nil {
				close(ch)
				return
			}
			if !errors.Is(err, jetstream.ErrConsumerNotFound) && !errors.Is(err, context.DeadlineExceeded) {
				p.log.Debug("waiting for the worker's consumer", zap.Error(err))
			}
			select {
			case <-p.closing:
				return
			case <-tk.C:
			}
		}
	}()
	return ch
}

func (p *Plugin) natsHealth() error {
	if p.nc == nil || !p.nc.IsConnected() {
		return fmt.Errorf("not connected to NATS at %s", redactURL(p.cfg.nats.URL))
	}
	if p.cfg.command == "" {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		if p.lastExit != nil {
			return fmt.Errorf("the worker is not running: %w", p.lastExit)
		}
		return errors.New("the worker is not running")
	}
	return nil
}
