package tpm

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keyward/keyward/keys"
)

// device is the connection to one TPM and what keyward has loaded in it: the
// parent, three reusable salted sessions and a small LRU of loaded key
// objects. It is not safe for concurrent use: TPM.mu serialises it.
//
// Slots: a TPM without a resource manager (swtpm, the simulator) holds 3
// transient objects and 3 loaded sessions. keyward uses the parent plus at
// most maxLoaded (2) key objects, and exactly 3 sessions:
//   - sessKey: the keys' auth value, parameter encryption both ways; TPM2_HMAC
//     (the derived wrap key and the MAC input never cross the bus in clear);
//   - sessSign: the keys' auth value, no encryption (TPM2_Sign refuses an
//     encrypted response; its digest is not secret);
//   - sessOwner: empty auth, response encryption: TPM2_GetRandom (data key
//     bytes; its command has no encryptable parameter, so the TPM refuses a
//     command-encrypting session).
//
// TPM2_Create (the new object's auth value is in the command) uses a one-off
// session with command encryption, flushed by the TPM after the command; as
// that would be a fourth session, sessOwner is started on demand and flushed
// before a Create. All
// sessions are salted with the pinned parent, so nobody on the bus can
// compute their session keys.
type device struct {
	dial      func() (Conn, error)
	conn      Conn
	auth      []byte         // the key objects' auth value
	persist   tpm2.TPMHandle // a configured persistent parent, or 0: the ECC SRK
	maxLoaded int
	log       *slog.Logger

	parent     tpm2.TPMHandle
	parentName tpm2.TPM2BName
	parentPub  tpm2.TPMTPublic
	// parentPubBytes is the parent's marshalled TPM2B_PUBLIC: what is pinned.
	parentPubBytes []byte
	// pinned is the expected parentPubBytes (nil until the first start pins it).
	pinned []byte

	sessKey, sessSign, sessOwner tpm2.Session
	loaded                       []*loadedObj // LRU, most recently used last

	ready     bool
	lastReset time.Time
	resets    uint64
	// current is conn, for abort: the one field read without the TPM slot.
	current atomic.Pointer[Conn]
	// aborted: Close gave up waiting for a command (abort); no connection
	// is made again.
	aborted atomic.Bool

	// Counters for Stats (read without the backend's mutex).
	recoveries, recoveryFailures, loads atomic.Uint64
	loadedNow                           atomic.Int64
}

type loadedObj struct {
	id     [32]byte // SHA-256 of the private blob
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
}

// resetGap rate-limits reconnects while the TPM is away.
const resetGap = 200 * time.Millisecond

// reset (re)establishes everything from scratch: dial, Startup, flush every
// transient object and session (a stale handle is never reused: after a TPM
// restart a new object can get an old number), recreate or read the parent and
// check it against the pin, start the sessions.
func (d *device) reset() error {
	d.ready = false
	d.loaded = nil
	d.loadedNow.Store(0)
	d.sessKey, d.sessSign, d.sessOwner = nil, nil, nil
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	d.lastReset = time.Now()
	d.resets++
	conn, err := d.dial()
	if err != nil {
		return err
	}
	d.conn = conn
	d.current.Store(&conn)
	if d.aborted.Load() { // abort ran while this dialled: it missed conn
		conn.Close()
		return errClosed
	}
	if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(conn); err != nil && !errors.Is(err, tpm2.TPMRCInitialize) {
		return fmt.Errorf("TPM2_Startup: %w", err)
	}
	if err := d.flushAll(); err != nil {
		return err
	}
	if err := d.loadParent(); err != nil {
		return err
	}
	var serr error
	start := func(auth []byte, enc bool, dir tpm2.AuthOption) tpm2.Session {
		if serr != nil {
			return nil
		}
		opts := []tpm2.AuthOption{tpm2.Auth(auth), tpm2.Salted(d.parent, d.parentPub)}
		if enc {
			opts = append(opts, dir)
		}
		s, _, err := tpm2.HMACSession(conn, tpm2.TPMAlgSHA256, 16, opts...)
		if err != nil {
			serr = fmt.Errorf("starting a salted session: %w", err)
		}
		return s
	}
	d.sessKey = start(d.auth, true, tpm2.AESEncryption(128, tpm2.EncryptInOut))
	d.sessSign = start(d.auth, false, nil)
	if serr != nil {
		return serr
	}
	d.ready = true
	return nil
}

// flushAll flushes every transient object and loaded session the TPM lists.
// Through /dev/tpmrm0 those are only this connection's; swtpm and the
// simulator serve one client, so they are all leftovers of this process.
func (d *device) flushAll() error {
	for _, ht := range []tpm2.TPMHT{tpm2.TPMHTTransient, tpm2.TPMHTHMACSession, tpm2.TPMHTPolicySession} {
		rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(ht) << 24, PropertyCount: 64}).Execute(d.conn)
		if err != nil {
			return fmt.Errorf("listing handles: %w", err)
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return fmt.Errorf("listing handles: %w", err)
		}
		for _, h := range hs.Handle {
			if uint32(h)>>24 != uint32(ht) {
				continue
			}
			if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(d.conn); err != nil {
				d.log.Warn("tpm flush of a leftover handle failed", "handle", fmt.Sprintf("0x%08x", uint32(h)), "err", err)
			}
		}
	}
	return nil
}

// loadParent creates the ECC storage primary (deterministic: the same owner
// seed and template give the same key) or reads a configured persistent
// parent, and checks it against the pin.
func (d *device) loadParent() error {
	if d.persist != 0 {
		rsp, err := (tpm2.ReadPublic{ObjectHandle: d.persist}).Execute(d.conn)
		if err != nil {
			return fmt.Errorf("reading persistent parent 0x%08x: %w", uint32(d.persist), err)
		}
		pub, err := rsp.OutPublic.Contents()
		if err != nil {
			return fmt.Errorf("persistent parent's public area: %w", err)
		}
		d.parent, d.parentName, d.parentPub = d.persist, rsp.Name, *pub
		d.parentPubBytes = tpm2.Marshal(rsp.OutPublic)
	} else {
		rsp, err := (tpm2.CreatePrimary{
			PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
		}).Execute(d.conn)
		if errors.Is(err, tpm2.TPMRCBadAuth) {
			// Another TPM user set an owner password: keyward cannot make
			// its parent under the owner hierarchy, and a restart will not
			// help. A configuration matter, not a device failure.
			return fmt.Errorf("creating the storage primary key: the owner hierarchy has an authorisation value (set by another user of this TPM): "+
				"have its owner create a persistent storage key and name it with parent_handle (docs/tpm.md, the pinned parent): %v: %w", err, ErrConfig)
		}
		if err != nil {
			return fmt.Errorf("creating the storage primary key: %w", err)
		}
		pub, err := rsp.OutPublic.Contents()
		if err != nil {
			return fmt.Errorf("storage primary's public area: %w", err)
		}
		d.parent, d.parentName, d.parentPub = rsp.ObjectHandle, rsp.Name, *pub
		d.parentPubBytes = tpm2.Marshal(rsp.OutPublic)
	}
	if !d.parentPub.ObjectAttributes.Restricted || !d.parentPub.ObjectAttributes.Decrypt || !d.parentPub.ObjectAttributes.FixedTPM {
		return fmt.Errorf("parent key is not a restricted fixedTPM storage key: %w", keys.ErrIntegrity)
	}
	if d.pinned != nil && !bytes.Equal(d.pinned, d.parentPubBytes) {
		return fmt.Errorf("the TPM's parent key differs from the one pinned in the state directory (another TPM, a cleared owner hierarchy, or another parent handle): %w", ErrParentMismatch)
	}
	return nil
}

// load returns a handle to the object of bp, loading it (evicting the least
// recently used object) when needed.
func (d *device) load(bp *blobPair) (*loadedObj, error) {
	id := sha256.Sum256(bp.Private)
	for i, o := range d.loaded {
		if o.id == id {
			copy(d.loaded[i:], d.loaded[i+1:])
			d.loaded[len(d.loaded)-1] = o
			return o, nil
		}
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](bp.Public)
	if err != nil {
		return nil, fmt.Errorf("stored public area: %v: %w", err, keys.ErrIntegrity)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](bp.Private)
	if err != nil {
		return nil, fmt.Errorf("stored private area: %v: %w", err, keys.ErrIntegrity)
	}
	for len(d.loaded) >= d.maxLoaded {
		d.evictOldest()
	}
	rsp, err := (tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: d.parent, Name: d.parentName, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    *priv,
		InPublic:     *pub,
	}).Execute(d.conn)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCIntegrity) || errors.Is(err, tpm2.TPMRCSize) || errors.Is(err, tpm2.TPMRCValue) || errors.Is(err, tpm2.TPMRCAttributes) || errors.Is(err, tpm2.TPMRCHash) {
			return nil, fmt.Errorf("the TPM refuses the stored blob (made by another TPM or parent, or altered): %v: %w", err, keys.ErrIntegrity)
		}
		return nil, fmt.Errorf("TPM2_Load: %w", err)
	}
	o := &loadedObj{id: id, handle: rsp.ObjectHandle, name: rsp.Name}
	d.loaded = append(d.loaded, o)
	d.loads.Add(1)
	d.loadedNow.Store(int64(len(d.loaded)))
	return o, nil
}

func (d *device) evictOldest() {
	o := d.loaded[0]
	d.loaded = d.loaded[1:]
	d.loadedNow.Store(int64(len(d.loaded)))
	if _, err := (tpm2.FlushContext{FlushHandle: o.handle}).Execute(d.conn); err != nil {
		d.log.Warn("tpm flush failed", "handle", fmt.Sprintf("0x%08x", uint32(o.handle)), "err", err)
	}
}

// forget flushes bp's object if it is loaded (its version is being destroyed).
func (d *device) forget(bp *blobPair) {
	id := sha256.Sum256(bp.Private)
	for i, o := range d.loaded {
		if o.id == id {
			d.loaded = append(d.loaded[:i], d.loaded[i+1:]...)
			d.loadedNow.Store(int64(len(d.loaded)))
			if _, err := (tpm2.FlushContext{FlushHandle: o.handle}).Execute(d.conn); err != nil {
				d.log.Warn("tpm flush failed", "handle", fmt.Sprintf("0x%08x", uint32(o.handle)), "err", err)
			}
			return
		}
	}
}

// flushLoaded flushes the cached key objects (on close).
func (d *device) flushLoaded() {
	for len(d.loaded) > 0 {
		d.evictOldest()
	}
}

// hmac runs TPM2_HMAC (SHA-256) with the keyed-hash object bp over data
// (at most 1024 bytes), with both directions encrypted.
func (d *device) hmac(bp *blobPair, data []byte) ([]byte, error) {
	o, err := d.load(bp)
	if err != nil {
		return nil, err
	}
	rsp, err := (tpm2.Hmac{
		Handle:  tpm2.AuthHandle{Handle: o.handle, Name: o.name, Auth: d.sessKey},
		Buffer:  tpm2.TPM2BMaxBuffer{Buffer: data},
		HashAlg: tpm2.TPMAlgSHA256,
	}).Execute(d.conn)
	if err != nil {
		return nil, fmt.Errorf("TPM2_HMAC: %w", err)
	}
	if len(rsp.OutHMAC.Buffer) != sha256.Size {
		return nil, fmt.Errorf("TPM2_HMAC returned %d bytes", len(rsp.OutHMAC.Buffer))
	}
	return rsp.OutHMAC.Buffer, nil
}

// sign runs TPM2_Sign over a SHA-256 digest with the object's own scheme.
func (d *device) sign(bp *blobPair, digest []byte) (*tpm2.TPMTSignature, error) {
	o, err := d.load(bp)
	if err != nil {
		return nil, err
	}
	rsp, err := (tpm2.Sign{
		KeyHandle:  tpm2.AuthHandle{Handle: o.handle, Name: o.name, Auth: d.sessSign},
		Digest:     tpm2.TPM2BDigest{Buffer: digest},
		InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}).Execute(d.conn)
	if err != nil {
		return nil, fmt.Errorf("TPM2_Sign: %w", err)
	}
	return &rsp.Signature, nil
}

// create generates a new child of the parent inside the TPM.
func (d *device) create(tmpl tpm2.TPMTPublic) (*blobPair, error) {
	d.dropOwnerSession()
	// TPM2_Create needs a free object slot for the object it makes: with
	// the parent and maxLoaded keys loaded, a TPM without a resource
	// manager (swtpm: 3 slots) answers TPM_RC_OBJECT_MEMORY, which cost a
	// reconnect on every key create or rotation.
	for len(d.loaded) > 0 && len(d.loaded) >= d.maxLoaded {
		d.evictOldest()
	}
	rsp, err := (tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: d.parent, Name: d.parentName,
			Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Salted(d.parent, d.parentPub), tpm2.AESEncryption(128, tpm2.EncryptIn))},
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			UserAuth: tpm2.TPM2BAuth{Buffer: d.auth},
		}},
		InPublic: tpm2.New2B(tmpl),
	}).Execute(d.conn)
	if err != nil {
		return nil, fmt.Errorf("TPM2_Create: %w", err)
	}
	return &blobPair{Public: tpm2.Marshal(rsp.OutPublic), Private: tpm2.Marshal(rsp.OutPrivate)}, nil
}

func (d *device) dropOwnerSession() {
	if d.sessOwner == nil {
		return
	}
	if _, err := (tpm2.FlushContext{FlushHandle: d.sessOwner.Handle()}).Execute(d.conn); err != nil {
		d.log.Warn("tpm session flush failed", "err", err)
	}
	d.sessOwner = nil
}

// random reads n bytes from the TPM's generator over an encrypted session.
func (d *device) random(n int) ([]byte, error) {
	if d.sessOwner == nil {
		s, _, err := tpm2.HMACSession(d.conn, tpm2.TPMAlgSHA256, 16, tpm2.Salted(d.parent, d.parentPub), tpm2.AESEncryption(128, tpm2.EncryptOut))
		if err != nil {
			return nil, fmt.Errorf("starting a salted session: %w", err)
		}
		d.sessOwner = s
	}
	out := make([]byte, 0, n)
	for len(out) < n {
		want := min(n-len(out), sha256.Size)
		rsp, err := (tpm2.GetRandom{BytesRequested: uint16(want)}).Execute(d.conn, d.sessOwner)
		if err != nil {
			return nil, fmt.Errorf("TPM2_GetRandom: %w", err)
		}
		if len(rsp.RandomBytes.Buffer) == 0 {
			return nil, fmt.Errorf("TPM2_GetRandom returned nothing")
		}
		out = append(out, rsp.RandomBytes.Buffer[:min(len(rsp.RandomBytes.Buffer), want)]...)
	}
	return out, nil
}

// needsReset reports whether err means the TPM or the connection lost state
// keyward relies on (restarted TPM, dropped connection, vanished handles):
// the cure is a reset, after which an idempotent operation may be retried.
func needsReset(err error) bool {
	if errors.Is(err, ErrTransport) {
		return true
	}
	for _, rc := range []tpm2.TPMRC{
		tpm2.TPMRCInitialize, tpm2.TPMRCHandle, tpm2.TPMRCObjectMemory, tpm2.TPMRCSessionMemory,
		tpm2.TPMRCReferenceH0, tpm2.TPMRCReferenceH1, tpm2.TPMRCReferenceH2,
		tpm2.TPMRCReferenceS0, tpm2.TPMRCReferenceS1, tpm2.TPMRCReferenceS2,
		tpm2.TPMRCExpired, tpm2.TPMRCContextGap, tpm2.TPMRCObjectHandles, tpm2.TPMRCSessionHandles,
	} {
		if errors.Is(err, rc) {
			return true
		}
	}
	return false
}

// close flushes what keyward loaded and closes the connection.
// abort closes the connection under a command that does not return (a
// hung TPM): its read fails, and nothing is flushed. Called without the
// TPM slot, at a stop only.
func (d *device) abort() {
	d.aborted.Store(true) // before the load: a reconnect then sees one or the other
	if c := d.current.Load(); c != nil {
		(*c).Close()
	}
}

func (d *device) close() error {
	if d.conn == nil {
		return nil
	}
	if d.ready {
		d.flushLoaded()
		for _, s := range []tpm2.Session{d.sessKey, d.sessSign, d.sessOwner} {
			if s != nil {
				(tpm2.FlushContext{FlushHandle: s.Handle()}).Execute(d.conn)
			}
		}
		if d.persist == 0 && d.parent != 0 {
			(tpm2.FlushContext{FlushHandle: d.parent}).Execute(d.conn)
		}
	}
	d.ready = false
	err := d.conn.Close()
	d.conn = nil
	return err
}
