package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	corev1 "k8s.io/api/core/v1"
)

// authConfFile is the one copy of the NATS users and their permissions
// (docs/security.md); the base's ConfigMap nats-config carries it.
const authConfFile = "deploy/k8s/base/nats/auth.conf"

// The stream the permission rules probe with (queue.StreamItems): a
// worker must not be able to delete it, the coordinator must be able to
// create it.
const (
	itemsStream       = "STEPFLOW_ITEMS"
	deleteItemsSubj   = "$JS.API.STREAM.DELETE." + itemsStream
	createItemsSubj   = "$JS.API.STREAM.CREATE." + itemsStream
	restrictedUserMsg = "use the restricted user (worker of " + authConfFile + ")"
)

// checkNATSAuth: the NATS config requires users; the coordinator and
// the worker log in as users of it, with the password the config gives
// that user, taken from a Secret; the worker's user is the restricted
// one (it may not publish everywhere, nor delete the items stream), the
// coordinator's may create the streams; no two users share a password.
func checkNATSAuth(n *natsServer, cs []*ours) error {
	where := "StatefulSet/" + n.STS.Name
	users := map[string]*server.User{}
	var names []string
	for _, u := range n.Opts.Users {
		users[u.Username] = u
		names = append(names, u.Username)
	}
	sort.Strings(names)
	if len(users) == 0 {
		return fmt.Errorf("%s: %s defines no users (authorization { users: [...] }): NATS would accept any client that reaches its port, and any client may delete every stream; `include ./auth.conf` (%s) in it", where, n.ConfPath, authConfFile)
	}
	var errs []error
	if n.Opts.NoAuthUser != "" {
		errs = append(errs, fmt.Errorf("%s: %s sets no_auth_user %q: clients without credentials get that user's permissions", where, n.ConfPath, n.Opts.NoAuthUser))
	}
	byPassword := map[string]string{}
	for _, name := range names {
		pw := users[name].Password
		if other, ok := byPassword[pw]; ok && pw != "" {
			errs = append(errs, fmt.Errorf("%s: NATS users %q and %q have the same password: whoever has one logs in as the other; give each its own Secret key", where, other, name))
		}
		byPassword[pw] = name
	}
	var coord *ours
	for _, oc := range cs {
		if oc.Bin.Name == "coordinator" {
			coord = oc
		}
	}
	for _, oc := range cs {
		if n.Opts.AuthCallout != nil && oc.Bin.Name == "worker" {
			errs = append(errs, checkCalloutWorker(n, oc, coord, users))
			continue
		}
		errs = append(errs, checkNATSCredentials(n, oc, users, names))
	}
	if n.Opts.AuthCallout != nil && coord != nil {
		errs = append(errs, checkCalloutCoordinator(n, coord))
	}
	return errors.Join(errs...)
}

// calloutWorkerUser is the user a worker logs in as through the
// coordinator's auth callout (natsauth.WorkerUser).
const calloutWorkerUser = "worker"

// checkCalloutWorker: with an auth callout, the worker logs in as
// calloutWorkerUser, which is no user of the config (a static user
// bypasses the callout, with permissions of its own), with an inbox key
// (the callout refuses a worker without one), and with the password the
// coordinator checks, from the same Secret key.
func checkCalloutWorker(n *natsServer, w, coord *ours, users map[string]*server.User) error {
	var errs []error
	if name, src := w.setting("nats-user"); name != calloutWorkerUser {
		errs = append(errs, fmt.Errorf("%s: %s=%q: with the auth callout of %s, workers log in as %q, whom the coordinator admits", w.where(), src, name, n.ConfPath, calloutWorkerUser))
	}
	if users[calloutWorkerUser] != nil {
		errs = append(errs, fmt.Errorf("StatefulSet/%s: %s defines user %q and an auth callout: the static user bypasses the callout, and workers logged in as it read each other's replies", n.STS.Name, n.ConfPath, calloutWorkerUser))
	}
	if v, src := w.setting("nats-inbox-key"); v != "true" {
		errs = append(errs, fmt.Errorf("%s: %s=%q: with the auth callout, a worker signs in with a key of its own (%s=true); the coordinator refuses it otherwise", w.where(), src, v, w.Bin.FlagEnv["nats-inbox-key"]))
	}
	pwEnv := w.Bin.FlagEnv["nats-password"]
	ref := secretKeyRef(w.C, pwEnv)
	if ref == nil {
		errs = append(errs, fmt.Errorf("%s: %s is not taken from a Secret: use env valueFrom.secretKeyRef", w.where(), pwEnv))
	}
	if coord == nil {
		return errors.Join(errs...)
	}
	cref := secretKeyRef(coord.C, calloutWorkerPasswordEnv)
	switch {
	case cref == nil:
		errs = append(errs, fmt.Errorf("%s: %s is not taken from a Secret: the coordinator checks the workers' password (auth callout of %s)", coord.where(), calloutWorkerPasswordEnv, n.ConfPath))
	case ref != nil && (ref.Name != cref.Name || ref.Key != cref.Key):
		errs = append(errs, fmt.Errorf("%s: the worker's password (%s) comes from Secret %s key %s, the one %s checks from Secret %s key %s: take both from the same key", w.where(), pwEnv, ref.Name, ref.Key, coord.where(), cref.Name, cref.Key))
	}
	return errors.Join(errs...)
}

// The coordinator's variables of the auth callout.
const (
	calloutSeedEnv           = "STEPFLOW_NATS_AUTH_CALLOUT_ISSUER_SEED"
	calloutWorkerPasswordEnv = "STEPFLOW_NATS_AUTH_CALLOUT_WORKER_PASSWORD"
)

// checkCalloutCoordinator: the coordinator answers the callout (it is
// one of its auth_users, and has the issuer's seed, from a Secret, whose
// public key is the server's issuer).
func checkCalloutCoordinator(n *natsServer, coord *ours) error {
	var errs []error
	ac := n.Opts.AuthCallout
	if name, _ := coord.setting("nats-user"); !contains(ac.AuthUsers, name) {
		errs = append(errs, fmt.Errorf("%s: NATS user %q is not one of the auth_users %v of %s: the coordinator answers the auth callout", coord.where(), name, ac.AuthUsers, n.ConfPath))
	}
	if secretKeyRef(coord.C, calloutSeedEnv) == nil {
		return errors.Join(append(errs, fmt.Errorf("%s: %s is not taken from a Secret: with the auth callout of %s, the coordinator signs the workers' logins with the issuer's seed", coord.where(), calloutSeedEnv, n.ConfPath))...)
	}
	kp, err := nkeys.FromSeed([]byte(coord.Env[calloutSeedEnv]))
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("%s: %s is no nkey seed: %w", coord.where(), calloutSeedEnv, err))...)
	}
	if pub, _ := kp.PublicKey(); pub != ac.Issuer {
		errs = append(errs, fmt.Errorf("%s: the public key of %s is %s, and the auth_callout issuer of %s is %s (%s): take both from one key pair", coord.where(), calloutSeedEnv, pub, n.ConfPath, ac.Issuer, n.passwordSource(ac.Issuer)))
	}
	return errors.Join(errs...)
}

func checkNATSCredentials(n *natsServer, oc *ours, users map[string]*server.User, names []string) error {
	for _, a := range oc.Args {
		if a.Name == "nats-password" {
			return fmt.Errorf("%s: --nats-password in args shows the password in the process list and the manifest; use %s from a Secret", oc.where(), oc.Bin.FlagEnv["nats-password"])
		}
	}
	name, usrc := oc.setting("nats-user")
	if name == "" {
		return fmt.Errorf("%s: no NATS user (%s): StatefulSet/%s %s requires one of %v", oc.where(), oc.Bin.FlagEnv["nats-user"], n.STS.Name, n.ConfPath, names)
	}
	u := users[name]
	if u == nil {
		return fmt.Errorf("%s: %s=%q is not a user of StatefulSet/%s %s (it has %v)", oc.where(), usrc, name, n.STS.Name, n.ConfPath, names)
	}
	var errs []error
	pwEnv := oc.Bin.FlagEnv["nats-password"]
	pw, psrc := oc.setting("nats-password")
	if ref := secretKeyRef(oc.C, pwEnv); ref == nil {
		errs = append(errs, fmt.Errorf("%s: %s is not taken from a Secret: use env valueFrom.secretKeyRef, the key the NATS container reads user %q's password from", oc.where(), pwEnv, name))
	}
	if pw != u.Password {
		errs = append(errs, fmt.Errorf("%s: the NATS password (%s) is not the one StatefulSet/%s %s gives user %q (%s): take both from the same key of the same Secret", oc.where(), psrc, n.STS.Name, n.ConfPath, name, n.passwordSource(u.Password)))
	}
	switch oc.Bin.Name {
	case "worker":
		switch {
		case publishesEverything(u.Permissions):
			errs = append(errs, fmt.Errorf("%s: logs in to NATS as %q (%s), a user that may publish to every subject (publish: [\">\"]): a worker, which runs whatever components its flows name, could delete every stream and forge items and run records; %s", oc.where(), name, usrc, restrictedUserMsg))
		case mayPublish(u.Permissions, deleteItemsSubj):
			errs = append(errs, fmt.Errorf("%s: logs in to NATS as %q (%s), a user that may delete stream %s (%s); %s", oc.where(), name, usrc, itemsStream, deleteItemsSubj, restrictedUserMsg))
		}
	case "coordinator":
		if !mayPublish(u.Permissions, createItemsSubj) {
			errs = append(errs, fmt.Errorf("%s: logs in to NATS as %q (%s), a user that may not create stream %s (%s): the coordinator provisions the streams and buckets; use the user with every permission (coordinator of %s)", oc.where(), name, usrc, itemsStream, createItemsSubj, authConfFile))
		}
	}
	return errors.Join(errs...)
}

// secretKeyRef returns the Secret key the container's variable name
// comes from (the last env entry of that name wins, as in the kubelet),
// nil if it is not from a Secret.
func secretKeyRef(c *corev1.Container, name string) *corev1.SecretKeySelector {
	var ref *corev1.SecretKeySelector
	for _, e := range c.Env {
		if e.Name == name {
			ref = nil
			if e.ValueFrom != nil {
				ref = e.ValueFrom.SecretKeyRef
			}
		}
	}
	return ref
}

// passwordSource names where the NATS container's config got password
// from: the variable (and its Secret key) whose value it is.
func (n *natsServer) passwordSource(password string) string {
	var out []string
	for _, e := range n.C.Env {
		if password == "" || n.Env[e.Name] != password {
			continue
		}
		s := "$" + e.Name
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			s += fmt.Sprintf(" of the NATS container, Secret %s key %s", e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return "a literal of the config"
	}
	return strings.Join(out, ", ")
}

// publishesEverything reports whether p lets its user publish to any
// subject: no publish permissions, or an allow list with ">" and no deny
// list.
func publishesEverything(p *server.Permissions) bool {
	if p == nil || p.Publish == nil {
		return true
	}
	return len(p.Publish.Deny) == 0 && (len(p.Publish.Allow) == 0 || contains(p.Publish.Allow, ">"))
}

// mayPublish evaluates p for subject as nats-server does: allowed by
// the allow list (or there is none), and not denied.
func mayPublish(p *server.Permissions, subject string) bool {
	if p == nil || p.Publish == nil {
		return true
	}
	allowed := len(p.Publish.Allow) == 0
	for _, a := range p.Publish.Allow {
		if server.SubjectMatchesFilter(subject, a) {
			allowed = true
		}
	}
	for _, d := range p.Publish.Deny {
		if server.SubjectMatchesFilter(subject, d) {
			return false
		}
	}
	return allowed
}

// generateNATSSecrets makes a password for every Secret key the NATS
// container reads (the users' passwords), as `openssl rand -hex 32` of
// docs/kubernetes.md would; the dynamic check puts them in the overlay's
// Secrets, so the server, the coordinator and the worker get them the
// way the pods get them.
func generateNATSSecrets(n *natsServer) (map[string]map[string]string, []string, error) {
	secrets := map[string]map[string]string{}
	var keys []string
	for _, e := range n.C.Env {
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			continue
		}
		r := e.ValueFrom.SecretKeyRef
		if secrets[r.Name] == nil {
			secrets[r.Name] = map[string]string{}
		}
		if r.Key == calloutIssuerKey {
			// The auth callout's public key: a key pair, whose seed the
			// coordinator gets from the same Secret.
			pair, err := newIssuerPair()
			if err != nil {
				return nil, nil, err
			}
			secrets[r.Name][r.Key], secrets[r.Name][calloutSeedKey] = pair.pub, pair.seed
			keys = append(keys, r.Name+"/"+r.Key, r.Name+"/"+calloutSeedKey)
			continue
		}
		pw, err := randomPassword()
		if err != nil {
			return nil, nil, err
		}
		secrets[r.Name][r.Key] = pw
		keys = append(keys, r.Name+"/"+r.Key)
	}
	return secrets, keys, nil
}

// randomPassword is 32 random bytes in hex; never all digits, which
// nats-server would read as a number.
func randomPassword() (string, error) {
	b := make([]byte, 32)
	for {
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		s := hex.EncodeToString(b)
		if strings.ContainsAny(s, "abcdef") {
			return s, nil
		}
	}
}

// natsLog is the dynamic check's nats-server logger: it keeps the
// permissions violations and refused logins, which the clients see only
// as timeouts or retries.
type natsLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *natsLog) Errorf(format string, v ...any) {
	s := fmt.Sprintf(format, v...)
	if strings.Contains(s, "Violation") || strings.Contains(s, server.ErrAuthentication.Error()) {
		l.mu.Lock()
		l.lines = append(l.lines, s)
		l.mu.Unlock()
	}
}

func (l *natsLog) Noticef(string, ...any) {}
func (l *natsLog) Warnf(string, ...any)   {}
func (l *natsLog) Fatalf(format string, v ...any) {
	l.Errorf(format, v...)
}
func (l *natsLog) Debugf(string, ...any) {}
func (l *natsLog) Tracef(string, ...any) {}

// take returns the lines logged since the last take.
func (l *natsLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.lines
	l.lines = nil
	return out
}

// checkWorkerDenied logs in to NATS as the worker (user, password) and
// tries to delete the items stream: the server must refuse it with a
// permissions violation, and the stream must still be there afterwards
// (asked as the coordinator, admin and adminPassword).
func checkWorkerDenied(natsURL, who, user, password string, withKey bool, admin, adminPassword string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	denied := make(chan error, 16)
	opts := []nats.Option{nats.UserInfo(user, password), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case denied <- err:
		default:
		}
	})}
	if withKey {
		// As a worker signs in through the auth callout.
		kp, err := nkeys.CreateUser()
		if err != nil {
			return err
		}
		pub, err := kp.PublicKey()
		if err != nil {
			return err
		}
		opts = append(opts, nats.Nkey(pub, kp.Sign), nats.CustomInboxPrefix("_INBOX_stepflow_worker."+pub))
	}
	nc, err := nats.Connect(natsURL, opts...)
	if err != nil {
		return fmt.Errorf("%s: connect to NATS as %q: %w", who, user, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	// A denied request gets no answer: it times out, and the server
	// reports the violation asynchronously.
	dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
	derr := js.DeleteStream(dctx, itemsStream)
	dcancel()
	if derr == nil {
		return fmt.Errorf("%s: NATS user %q deleted stream %s: the worker's credentials must be refused %s (%s)", who, user, itemsStream, deleteItemsSubj, restrictedUserMsg)
	}
	violation := func(err error) bool {
		return errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), deleteItemsSubj)
	}
	if !violation(derr) {
		wait := time.After(10 * time.Second)
	waiting:
		for {
			select {
			case err := <-denied:
				if violation(err) {
					break waiting
				}
			case <-wait:
				return fmt.Errorf("%s: deleting stream %s as NATS user %q failed with %v, but NATS reported no permissions violation for %s", who, itemsStream, user, derr, deleteItemsSubj)
			}
		}
	}
	anc, err := nats.Connect(natsURL, nats.UserInfo(admin, adminPassword))
	if err != nil {
		return fmt.Errorf("connect to NATS as %q: %w", admin, err)
	}
	defer anc.Close()
	ajs, err := jetstream.New(anc)
	if err != nil {
		return err
	}
	if _, err := ajs.Stream(ctx, itemsStream); err != nil {
		return fmt.Errorf("%s: stream %s after NATS user %q tried to delete it: %w", who, itemsStream, user, err)
	}
	return nil
}
