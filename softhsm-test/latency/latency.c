/*
 * A PKCS#11 module that forwards every call to another module (SoftHSM2 in
 * keyward's tests) after a delay, as a network HSM does: each call is a
 * round trip. It can also cap the calls the device runs at once and the
 * sessions it accepts, as an HSM partition does, and count the calls made
 * to each function.
 *
 * Settings, read from the environment when the module is loaded:
 *   KEYWARD_LATENCY_TARGET        the module to forward to (required)
 *   KEYWARD_LATENCY_RTT_US        round trip in microseconds, half before the
 *                                 call reaches the target, half after (0)
 *   KEYWARD_LATENCY_MAX_CALLS     calls the target runs at once; more wait (0: no cap)
 *   KEYWARD_LATENCY_MAX_SESSIONS  sessions open at once; C_OpenSession beyond
 *                                 it fails with CKR_SESSION_COUNT, and
 *                                 C_GetTokenInfo reports it as
 *                                 ulMaxSessionCount (0: the target's)
 *   KEYWARD_LATENCY_SHORT_BUFFER  1: C_Encrypt, C_Decrypt and C_Sign answer
 *                                 CKR_BUFFER_TOO_SMALL, with a length one byte
 *                                 over what the target needs, to a caller whose
 *                                 buffer is smaller than that, and keep the
 *                                 operation active, as PKCS#11 5.2 says (0)
 *   KEYWARD_LATENCY_FAIL          NAME=RV: the function NAME (C_DecryptInit...)
 *                                 answers RV (decimal or 0x hex) without
 *                                 calling the target, as a failing device does
 *   KEYWARD_LATENCY_COUNTS        a file the call counts are kept in, shared
 *                                 by every process that loads the module: the
 *                                 first 4096 bytes are the function names, one
 *                                 per line, then one native-endian uint64 per
 *                                 name, in the same order
 *
 * Built by the tests (softhsmtest.BuildLatencyModule) with the system's C
 * compiler and p11-kit's PKCS#11 header.
 */
#define _GNU_SOURCE
#define CRYPTOKI_GNU
#include <p11-kit/pkcs11.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define CK_RV ck_rv_t

enum {
	IDX_C_Initialize,
	IDX_C_Finalize,
	IDX_C_GetInfo,
	IDX_C_GetFunctionList,
	IDX_C_GetSlotList,
	IDX_C_GetSlotInfo,
	IDX_C_GetTokenInfo,
	IDX_C_GetMechanismList,
	IDX_C_GetMechanismInfo,
	IDX_C_InitToken,
	IDX_C_InitPIN,
	IDX_C_SetPIN,
	IDX_C_OpenSession,
	IDX_C_CloseSession,
	IDX_C_CloseAllSessions,
	IDX_C_GetSessionInfo,
	IDX_C_GetOperationState,
	IDX_C_SetOperationState,
	IDX_C_Login,
	IDX_C_Logout,
	IDX_C_CreateObject,
	IDX_C_CopyObject,
	IDX_C_DestroyObject,
	IDX_C_GetObjectSize,
	IDX_C_GetAttributeValue,
	IDX_C_SetAttributeValue,
	IDX_C_FindObjectsInit,
	IDX_C_FindObjects,
	IDX_C_FindObjectsFinal,
	IDX_C_EncryptInit,
	IDX_C_Encrypt,
	IDX_C_EncryptUpdate,
	IDX_C_EncryptFinal,
	IDX_C_DecryptInit,
	IDX_C_Decrypt,
	IDX_C_DecryptUpdate,
	IDX_C_DecryptFinal,
	IDX_C_DigestInit,
	IDX_C_Digest,
	IDX_C_DigestUpdate,
	IDX_C_DigestKey,
	IDX_C_DigestFinal,
	IDX_C_SignInit,
	IDX_C_Sign,
	IDX_C_SignUpdate,
	IDX_C_SignFinal,
	IDX_C_SignRecoverInit,
	IDX_C_SignRecover,
	IDX_C_VerifyInit,
	IDX_C_Verify,
	IDX_C_VerifyUpdate,
	IDX_C_VerifyFinal,
	IDX_C_VerifyRecoverInit,
	IDX_C_VerifyRecover,
	IDX_C_DigestEncryptUpdate,
	IDX_C_DecryptDigestUpdate,
	IDX_C_SignEncryptUpdate,
	IDX_C_DecryptVerifyUpdate,
	IDX_C_GenerateKey,
	IDX_C_GenerateKeyPair,
	IDX_C_WrapKey,
	IDX_C_UnwrapKey,
	IDX_C_DeriveKey,
	IDX_C_SeedRandom,
	IDX_C_GenerateRandom,
	IDX_C_GetFunctionStatus,
	IDX_C_CancelFunction,
	IDX_C_WaitForSlotEvent,
	IDX_COUNT
};

static const char *const names[IDX_COUNT] = {
	"C_Initialize",
	"C_Finalize",
	"C_GetInfo",
	"C_GetFunctionList",
	"C_GetSlotList",
	"C_GetSlotInfo",
	"C_GetTokenInfo",
	"C_GetMechanismList",
	"C_GetMechanismInfo",
	"C_InitToken",
	"C_InitPIN",
	"C_SetPIN",
	"C_OpenSession",
	"C_CloseSession",
	"C_CloseAllSessions",
	"C_GetSessionInfo",
	"C_GetOperationState",
	"C_SetOperationState",
	"C_Login",
	"C_Logout",
	"C_CreateObject",
	"C_CopyObject",
	"C_DestroyObject",
	"C_GetObjectSize",
	"C_GetAttributeValue",
	"C_SetAttributeValue",
	"C_FindObjectsInit",
	"C_FindObjects",
	"C_FindObjectsFinal",
	"C_EncryptInit",
	"C_Encrypt",
	"C_EncryptUpdate",
	"C_EncryptFinal",
	"C_DecryptInit",
	"C_Decrypt",
	"C_DecryptUpdate",
	"C_DecryptFinal",
	"C_DigestInit",
	"C_Digest",
	"C_DigestUpdate",
	"C_DigestKey",
	"C_DigestFinal",
	"C_SignInit",
	"C_Sign",
	"C_SignUpdate",
	"C_SignFinal",
	"C_SignRecoverInit",
	"C_SignRecover",
	"C_VerifyInit",
	"C_Verify",
	"C_VerifyUpdate",
	"C_VerifyFinal",
	"C_VerifyRecoverInit",
	"C_VerifyRecover",
	"C_DigestEncryptUpdate",
	"C_DecryptDigestUpdate",
	"C_SignEncryptUpdate",
	"C_DecryptVerifyUpdate",
	"C_GenerateKey",
	"C_GenerateKeyPair",
	"C_WrapKey",
	"C_UnwrapKey",
	"C_DeriveKey",
	"C_SeedRandom",
	"C_GenerateRandom",
	"C_GetFunctionStatus",
	"C_CancelFunction",
	"C_WaitForSlotEvent",
};

#define COUNTS_OFFSET 4096

static void fill (struct ck_function_list *f);

static struct ck_function_list *target;
static struct ck_function_list list;
static long half_delay_ns;
static long max_calls;
static long max_sessions;
static long short_buffer;
static int fail_idx = -1; /* KEYWARD_LATENCY_FAIL's function */
static CK_RV fail_rv;
static volatile uint64_t *counts;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int load_failed;

static pthread_mutex_t calls_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t calls_cond = PTHREAD_COND_INITIALIZER;
static long calls_running;

static pthread_mutex_t sessions_mu = PTHREAD_MUTEX_INITIALIZER;
static long sessions_open;

static long
env_long (const char *name)
{
	const char *v = getenv (name);
	char *end;
	long n;

	if (v == NULL || *v == '\0')
		return 0;
	errno = 0;
	n = strtol (v, &end, 10);
	if (errno != 0 || *end != '\0' || n < 0) {
		fprintf (stderr, "latency module: %s=%s is not a number >= 0\n", name, v);
		load_failed = 1;
		return 0;
	}
	return n;
}

/* open_counts maps the counts file, writing the names on first use. */
static void
open_counts (const char *path)
{
	size_t size = COUNTS_OFFSET + IDX_COUNT * sizeof (uint64_t);
	int fd = open (path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	char *p;
	size_t off = 0;
	int i;

	if (fd < 0 || ftruncate (fd, size) != 0) {
		fprintf (stderr, "latency module: counts file %s: %s\n", path, strerror (errno));
		load_failed = 1;
		if (fd >= 0)
			close (fd);
		return;
	}
	p = mmap (NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close (fd);
	if (p == MAP_FAILED) {
		load_failed = 1;
		return;
	}
	for (i = 0; i < IDX_COUNT; i++) {
		size_t n = strlen (names[i]);
		memcpy (p + off, names[i], n);
		p[off + n] = '\n';
		off += n + 1;
	}
	counts = (volatile uint64_t *)(p + COUNTS_OFFSET);
}

/* parse_fail reads KEYWARD_LATENCY_FAIL, NAME=RV. */
static void
parse_fail (const char *spec)
{
	const char *eq;
	size_t i;

	if (spec == NULL || (eq = strchr (spec, '=')) == NULL)
		return;
	for (i = 0; i < sizeof names / sizeof names[0]; i++) {
		if (strlen (names[i]) == (size_t)(eq - spec) && strncmp (names[i], spec, eq - spec) == 0) {
			fail_idx = (int)i;
			fail_rv = strtoul (eq + 1, NULL, 0);
			return;
		}
	}
	fprintf (stderr, "latency module: KEYWARD_LATENCY_FAIL names no function: %s\n", spec);
}

static void
load (void)
{
	const char *path = getenv ("KEYWARD_LATENCY_TARGET");
	const char *counts_path = getenv ("KEYWARD_LATENCY_COUNTS");
	CK_RV (*get) (struct ck_function_list **);
	void *h;

	half_delay_ns = env_long ("KEYWARD_LATENCY_RTT_US") * 1000 / 2;
	max_calls = env_long ("KEYWARD_LATENCY_MAX_CALLS");
	max_sessions = env_long ("KEYWARD_LATENCY_MAX_SESSIONS");
	short_buffer = env_long ("KEYWARD_LATENCY_SHORT_BUFFER");
	parse_fail (getenv ("KEYWARD_LATENCY_FAIL"));
	if (counts_path != NULL && *counts_path != '\0')
		open_counts (counts_path);
	if (path == NULL || *path == '\0') {
		fprintf (stderr, "latency module: KEYWARD_LATENCY_TARGET is not set\n");
		load_failed = 1;
		return;
	}
	h = dlopen (path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		fprintf (stderr, "latency module: %s\n", dlerror ());
		load_failed = 1;
		return;
	}
	get = (CK_RV (*) (struct ck_function_list **)) dlsym (h, "C_GetFunctionList");
	if (get == NULL || get (&target) != CKR_OK || target == NULL) {
		fprintf (stderr, "latency module: %s has no usable C_GetFunctionList\n", path);
		load_failed = 1;
		return;
	}
	fill (&list);
}

/* wait_half sleeps for half the round trip, with the thread's timer slack
 * at 1 ns so that a 500 us sleep is not 550. */
static void
wait_half (void)
{
	static __thread int slack_set;
	struct timespec ts;

	if (half_delay_ns == 0)
		return;
	if (!slack_set) {
		prctl (PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
		slack_set = 1;
	}
	ts.tv_sec = half_delay_ns / 1000000000L;
	ts.tv_nsec = half_delay_ns % 1000000000L;
	while (nanosleep (&ts, &ts) != 0 && errno == EINTR)
		;
}

static void
enter (int idx)
{
	if (counts != NULL)
		__atomic_fetch_add (&counts[idx], 1, __ATOMIC_RELAXED);
	wait_half ();
	if (max_calls == 0)
		return;
	pthread_mutex_lock (&calls_mu);
	while (calls_running >= max_calls)
		pthread_cond_wait (&calls_cond, &calls_mu);
	calls_running++;
	pthread_mutex_unlock (&calls_mu);
}

static void
leave (void)
{
	if (max_calls != 0) {
		pthread_mutex_lock (&calls_mu);
		calls_running--;
		pthread_cond_signal (&calls_cond);
		pthread_mutex_unlock (&calls_mu);
	}
	wait_half ();
}

#define CALL(name, args) do {				\
	CK_RV rv;					\
	enter (IDX_ ## name);				\
	rv = fail_idx == IDX_ ## name ? fail_rv : target->name args; \
	leave ();					\
	return rv;					\
} while (0)

typedef CK_RV (*single_part_t) (ck_session_handle_t, unsigned char *, unsigned long, unsigned char *, unsigned long *);

/* single_part forwards a single-part call; with short_buffer set, a caller
 * whose buffer is smaller than one byte over what the target needs is told
 * CKR_BUFFER_TOO_SMALL with that length, the operation left active. */
static CK_RV
single_part (single_part_t f, ck_session_handle_t session, unsigned char *in, unsigned long in_len, unsigned char *out, unsigned long *out_len)
{
	unsigned long need = 0;
	CK_RV rv;

	if (!short_buffer || out == NULL || out_len == NULL)
		return f (session, in, in_len, out, out_len);
	rv = f (session, in, in_len, NULL, &need);
	if (rv != CKR_OK)
		return rv;
	if (*out_len < need + 1) {
		*out_len = need + 1;
		return CKR_BUFFER_TOO_SMALL;
	}
	return f (session, in, in_len, out, out_len);
}

#define SINGLE(name, args) do {				\
	CK_RV rv;					\
	enter (IDX_ ## name);				\
	rv = fail_idx == IDX_ ## name ? fail_rv : single_part args; \
	leave ();					\
	return rv;					\
} while (0)

static CK_RV
w_Initialize (void *init_args)
{
	CALL (C_Initialize, (init_args));
}

static CK_RV
w_Finalize (void *reserved)
{
	CALL (C_Finalize, (reserved));
}

static CK_RV
w_GetTokenInfo (ck_slot_id_t slot_id, struct ck_token_info *info)
{
	CK_RV rv;

	enter (IDX_C_GetTokenInfo);
	rv = target->C_GetTokenInfo (slot_id, info);
	leave ();
	if (rv == CKR_OK && max_sessions != 0)
		info->max_session_count = max_sessions;
	return rv;
}

/* A session counts against KEYWARD_LATENCY_MAX_SESSIONS from its
 * C_OpenSession to its C_CloseSession (or C_CloseAllSessions, which ends
 * them all: the tests use one slot). */
static CK_RV
w_OpenSession (ck_slot_id_t slot_id, ck_flags_t flags, void *application,
	       ck_notify_t notify, ck_session_handle_t *session)
{
	CK_RV rv;

	pthread_mutex_lock (&sessions_mu);
	if (max_sessions != 0 && sessions_open >= max_sessions) {
		pthread_mutex_unlock (&sessions_mu);
		enter (IDX_C_OpenSession);
		leave ();
		return CKR_SESSION_COUNT;
	}
	sessions_open++;
	pthread_mutex_unlock (&sessions_mu);
	enter (IDX_C_OpenSession);
	rv = target->C_OpenSession (slot_id, flags, application, notify, session);
	leave ();
	if (rv != CKR_OK) {
		pthread_mutex_lock (&sessions_mu);
		sessions_open--;
		pthread_mutex_unlock (&sessions_mu);
	}
	return rv;
}

static CK_RV
w_CloseSession (ck_session_handle_t session)
{
	CK_RV rv;

	enter (IDX_C_CloseSession);
	rv = target->C_CloseSession (session);
	leave ();
	if (rv == CKR_OK) {
		pthread_mutex_lock (&sessions_mu);
		sessions_open--;
		pthread_mutex_unlock (&sessions_mu);
	}
	return rv;
}

static CK_RV
w_CloseAllSessions (ck_slot_id_t slot_id)
{
	CK_RV rv;

	enter (IDX_C_CloseAllSessions);
	rv = target->C_CloseAllSessions (slot_id);
	leave ();
	if (rv == CKR_OK) {
		pthread_mutex_lock (&sessions_mu);
		sessions_open = 0;
		pthread_mutex_unlock (&sessions_mu);
	}
	return rv;
}

static CK_RV
w_GetInfo (struct ck_info *info)
{
	CALL (C_GetInfo, (info));
}

static CK_RV
w_GetSlotList (unsigned char token_present, ck_slot_id_t *slot_list, unsigned long *count)
{
	CALL (C_GetSlotList, (token_present, slot_list, count));
}

static CK_RV
w_GetSlotInfo (ck_slot_id_t slot_id, struct ck_slot_info *info)
{
	CALL (C_GetSlotInfo, (slot_id, info));
}


static CK_RV
w_GetMechanismList (ck_slot_id_t slot_id, ck_mechanism_type_t *mechanism_list, unsigned long *count)
{
	CALL (C_GetMechanismList, (slot_id, mechanism_list, count));
}

static CK_RV
w_GetMechanismInfo (ck_slot_id_t slot_id, ck_mechanism_type_t type, struct ck_mechanism_info *info)
{
	CALL (C_GetMechanismInfo, (slot_id, type, info));
}

static CK_RV
w_InitToken (ck_slot_id_t slot_id, unsigned char *pin, unsigned long pin_len, unsigned char *label)
{
	CALL (C_InitToken, (slot_id, pin, pin_len, label));
}

static CK_RV
w_InitPIN (ck_session_handle_t session, unsigned char *pin, unsigned long pin_len)
{
	CALL (C_InitPIN, (session, pin, pin_len));
}

static CK_RV
w_SetPIN (ck_session_handle_t session, unsigned char *old_pin, unsigned long old_len, unsigned char *new_pin, unsigned long new_len)
{
	CALL (C_SetPIN, (session, old_pin, old_len, new_pin, new_len));
}




static CK_RV
w_GetSessionInfo (ck_session_handle_t session, struct ck_session_info *info)
{
	CALL (C_GetSessionInfo, (session, info));
}

static CK_RV
w_GetOperationState (ck_session_handle_t session, unsigned char *operation_state, unsigned long *operation_state_len)
{
	CALL (C_GetOperationState, (session, operation_state, operation_state_len));
}

static CK_RV
w_SetOperationState (ck_session_handle_t session, unsigned char *operation_state, unsigned long operation_state_len, ck_object_handle_t encryption_key, ck_object_handle_t authentiation_key)
{
	CALL (C_SetOperationState, (session, operation_state, operation_state_len, encryption_key, authentiation_key));
}

static CK_RV
w_Login (ck_session_handle_t session, ck_user_type_t user_type, unsigned char *pin, unsigned long pin_len)
{
	CALL (C_Login, (session, user_type, pin, pin_len));
}

static CK_RV
w_Logout (ck_session_handle_t session)
{
	CALL (C_Logout, (session));
}

static CK_RV
w_CreateObject (ck_session_handle_t session, struct ck_attribute *templ, unsigned long count, ck_object_handle_t *object)
{
	CALL (C_CreateObject, (session, templ, count, object));
}

static CK_RV
w_CopyObject (ck_session_handle_t session, ck_object_handle_t object, struct ck_attribute *templ, unsigned long count, ck_object_handle_t *new_object)
{
	CALL (C_CopyObject, (session, object, templ, count, new_object));
}

static CK_RV
w_DestroyObject (ck_session_handle_t session, ck_object_handle_t object)
{
	CALL (C_DestroyObject, (session, object));
}

static CK_RV
w_GetObjectSize (ck_session_handle_t session, ck_object_handle_t object, unsigned long *size)
{
	CALL (C_GetObjectSize, (session, object, size));
}

static CK_RV
w_GetAttributeValue (ck_session_handle_t session, ck_object_handle_t object, struct ck_attribute *templ, unsigned long count)
{
	CALL (C_GetAttributeValue, (session, object, templ, count));
}

static CK_RV
w_SetAttributeValue (ck_session_handle_t session, ck_object_handle_t object, struct ck_attribute *templ, unsigned long count)
{
	CALL (C_SetAttributeValue, (session, object, templ, count));
}

static CK_RV
w_FindObjectsInit (ck_session_handle_t session, struct ck_attribute *templ, unsigned long count)
{
	CALL (C_FindObjectsInit, (session, templ, count));
}

static CK_RV
w_FindObjects (ck_session_handle_t session, ck_object_handle_t *object, unsigned long max_object_count, unsigned long *object_count)
{
	CALL (C_FindObjects, (session, object, max_object_count, object_count));
}

static CK_RV
w_FindObjectsFinal (ck_session_handle_t session)
{
	CALL (C_FindObjectsFinal, (session));
}

static CK_RV
w_EncryptInit (ck_session_handle_t session, struct ck_mechanism *mechanism, ck_object_handle_t key)
{
	CALL (C_EncryptInit, (session, mechanism, key));
}

static CK_RV
w_Encrypt (ck_session_handle_t session, unsigned char *data, unsigned long data_len, unsigned char *encrypted_data, unsigned long *encrypted_data_len)
{
	SINGLE (C_Encrypt, (target->C_Encrypt, session, data, data_len, encrypted_data, encrypted_data_len));
}

static CK_RV
w_EncryptUpdate (ck_session_handle_t session, unsigned char *part, unsigned long part_len, unsigned char *encrypted_part, unsigned long *encrypted_part_len)
{
	CALL (C_EncryptUpdate, (session, part, part_len, encrypted_part, encrypted_part_len));
}

static CK_RV
w_EncryptFinal (ck_session_handle_t session, unsigned char *last_encrypted_part, unsigned long *last_encrypted_part_len)
{
	CALL (C_EncryptFinal, (session, last_encrypted_part, last_encrypted_part_len));
}

static CK_RV
w_DecryptInit (ck_session_handle_t session, struct ck_mechanism *mechanism, ck_object_handle_t key)
{
	CALL (C_DecryptInit, (session, mechanism, key));
}

static CK_RV
w_Decrypt (ck_session_handle_t session, unsigned char *encrypted_data, unsigned long encrypted_data_len, unsigned char *data, unsigned long *data_len)
{
	SINGLE (C_Decrypt, (target->C_Decrypt, session, encrypted_data, encrypted_data_len, data, data_len));
}

static CK_RV
w_DecryptUpdate (ck_session_handle_t session, unsigned char *encrypted_part, unsigned long encrypted_part_len, unsigned char *part, unsigned long *part_len)
{
	CALL (C_DecryptUpdate, (session, encrypted_part, encrypted_part_len, part, part_len));
}

static CK_RV
w_DecryptFinal (ck_session_handle_t session, unsigned char *last_part, unsigned long *last_part_len)
{
	CALL (C_DecryptFinal, (session, last_part, last_part_len));
}

static CK_RV
w_DigestInit (ck_session_handle_t session, struct ck_mechanism *mechanism)
{
	CALL (C_DigestInit, (session, mechanism));
}

static CK_RV
w_Digest (ck_session_handle_t session, unsigned char *data, unsigned long data_len, unsigned char *digest, unsigned long *digest_len)
{
	CALL (C_Digest, (session, data, data_len, digest, digest_len));
}

static CK_RV
w_DigestUpdate (ck_session_handle_t session, unsigned char *part, unsigned long part_len)
{
	CALL (C_DigestUpdate, (session, part, part_len));
}

static CK_RV
w_DigestKey (ck_session_handle_t session, ck_object_handle_t key)
{
	CALL (C_DigestKey, (session, key));
}

static CK_RV
w_DigestFinal (ck_session_handle_t session, unsigned char *digest, unsigned long *digest_len)
{
	CALL (C_DigestFinal, (session, digest, digest_len));
}

static CK_RV
w_SignInit (ck_session_handle_t session, struct ck_mechanism *mechanism, ck_object_handle_t key)
{
	CALL (C_SignInit, (session, mechanism, key));
}

static CK_RV
w_Sign (ck_session_handle_t session, unsigned char *data, unsigned long data_len, unsigned char *signature, unsigned long *signature_len)
{
	SINGLE (C_Sign, (target->C_Sign, session, data, data_len, signature, signature_len));
}

static CK_RV
w_SignUpdate (ck_session_handle_t session, unsigned char *part, unsigned long part_len)
{
	CALL (C_SignUpdate, (session, part, part_len));
}

static CK_RV
w_SignFinal (ck_session_handle_t session, unsigned char *signature, unsigned long *signature_len)
{
	CALL (C_SignFinal, (session, signature, signature_len));
}

static CK_RV
w_SignRecoverInit (ck_session_handle_t session, struct ck_mechanism *mechanism, ck_object_handle_t key)
{
	CALL (C_SignRecoverInit, (session, mechanism, key));
}

static CK_RV
w_SignRecover (ck_session_handle_t session, unsigned char *data, unsigned long data_len, unsigned char *signature, unsigned long *signature_len)
{
	CALL (C_SignRecover, (session, data, data_len, signature, signature_len));
}

static CK_RV
w_VerifyInit (ck_session_handle_t session, struct ck_mechanism *mechanism, ck_object_handle_t key)
{
	CALL (C_VerifyInit, (session, mechanism, key));
}

static CK_RV
w_Verify (ck_session_handle_t session, unsigned char *data, unsigned long data_len, unsigned char *signature, unsigned long signature_len)
{
	CALL (C_Verify, (session, data, data_len, signature, signature_len));
}

static CK_RV
w_VerifyUpdate (ck_session_handle_t session, unsigned char *part, unsigned long part_len)
{
	CALL (C_VerifyUpdate, (session, part, part_len));
}

static CK_RV
w_VerifyFinal (ck_session_handle_t session, unsigned char *signature, unsigned long signature_len)
{
	CALL (C_VerifyFinal, (session, signature, signature_len));
}

static CK_RV
w_VerifyRecoverInit (ck_session_handle_t session, struct ck_mechanism *mechanism, ck_object_handle_t key)
{
	CALL (C_VerifyRecoverInit, (session, mechanism, key));
}

static CK_RV
w_VerifyRecover (ck_session_handle_t session, unsigned char *signature, unsigned long signature_len, unsigned char *data, unsigned long *data_len)
{
	CALL (C_VerifyRecover, (session, signature, signature_len, data, data_len));
}

static CK_RV
w_DigestEncryptUpdate (ck_session_handle_t session, unsigned char *part, unsigned long part_len, unsigned char *encrypted_part, unsigned long *encrypted_part_len)
{
	CALL (C_DigestEncryptUpdate, (session, part, part_len, encrypted_part, encrypted_part_len));
}

static CK_RV
w_DecryptDigestUpdate (ck_session_handle_t session, unsigned char *encrypted_part, unsigned long encrypted_part_len, unsigned char *part, unsigned long *part_len)
{
	CALL (C_DecryptDigestUpdate, (session, encrypted_part, encrypted_part_len, part, part_len));
}

static CK_RV
w_SignEncryptUpdate (ck_session_handle_t session, unsigned char *part, unsigned long part_len, unsigned char *encrypted_part, unsigned long *encrypted_part_len)
{
	CALL (C_SignEncryptUpdate, (session, part, part_len, encrypted_part, encrypted_part_len));
}

static CK_RV
w_DecryptVerifyUpdate (ck_session_handle_t session, unsigned char *encrypted_part, unsigned long encrypted_part_len, unsigned char *part, unsigned long *part_len)
{
	CALL (C_DecryptVerifyUpdate, (session, encrypted_part, encrypted_part_len, part, part_len));
}

static CK_RV
w_GenerateKey (ck_session_handle_t session, struct ck_mechanism *mechanism, struct ck_attribute *templ, unsigned long count, ck_object_handle_t *key)
{
	CALL (C_GenerateKey, (session, mechanism, templ, count, key));
}

static CK_RV
w_GenerateKeyPair (ck_session_handle_t session, struct ck_mechanism *mechanism, struct ck_attribute *public_key_template, unsigned long public_key_attribute_count, struct ck_attribute *private_key_template, unsigned long private_key_attribute_count, ck_object_handle_t *public_key, ck_object_handle_t *private_key)
{
	CALL (C_GenerateKeyPair, (session, mechanism, public_key_template, public_key_attribute_count, private_key_template, private_key_attribute_count, public_key, private_key));
}

static CK_RV
w_WrapKey (ck_session_handle_t session, struct ck_mechanism *mechanism, ck_object_handle_t wrapping_key, ck_object_handle_t key, unsigned char *wrapped_key, unsigned long *wrapped_key_len)
{
	CALL (C_WrapKey, (session, mechanism, wrapping_key, key, wrapped_key, wrapped_key_len));
}

static CK_RV
w_UnwrapKey (ck_session_handle_t session, struct ck_mechanism *mechanism, ck_object_handle_t unwrapping_key, unsigned char *wrapped_key, unsigned long wrapped_key_len, struct ck_attribute *templ, unsigned long attribute_count, ck_object_handle_t *key)
{
	CALL (C_UnwrapKey, (session, mechanism, unwrapping_key, wrapped_key, wrapped_key_len, templ, attribute_count, key));
}

static CK_RV
w_DeriveKey (ck_session_handle_t session, struct ck_mechanism *mechanism, ck_object_handle_t base_key, struct ck_attribute *templ, unsigned long attribute_count, ck_object_handle_t *key)
{
	CALL (C_DeriveKey, (session, mechanism, base_key, templ, attribute_count, key));
}

static CK_RV
w_SeedRandom (ck_session_handle_t session, unsigned char *seed, unsigned long seed_len)
{
	CALL (C_SeedRandom, (session, seed, seed_len));
}

static CK_RV
w_GenerateRandom (ck_session_handle_t session, unsigned char *random_data, unsigned long random_len)
{
	CALL (C_GenerateRandom, (session, random_data, random_len));
}

static CK_RV
w_GetFunctionStatus (ck_session_handle_t session)
{
	CALL (C_GetFunctionStatus, (session));
}

static CK_RV
w_CancelFunction (ck_session_handle_t session)
{
	CALL (C_CancelFunction, (session));
}

static CK_RV
w_WaitForSlotEvent (ck_flags_t flags, ck_slot_id_t *slot, void *reserved)
{
	CALL (C_WaitForSlotEvent, (flags, slot, reserved));
}

static void
fill (struct ck_function_list *f)
{
	f->version = target->version;
	f->C_Initialize = w_Initialize;
	f->C_Finalize = w_Finalize;
	f->C_GetInfo = w_GetInfo;
	f->C_GetSlotList = w_GetSlotList;
	f->C_GetSlotInfo = w_GetSlotInfo;
	f->C_GetTokenInfo = w_GetTokenInfo;
	f->C_GetMechanismList = w_GetMechanismList;
	f->C_GetMechanismInfo = w_GetMechanismInfo;
	f->C_InitToken = w_InitToken;
	f->C_InitPIN = w_InitPIN;
	f->C_SetPIN = w_SetPIN;
	f->C_OpenSession = w_OpenSession;
	f->C_CloseSession = w_CloseSession;
	f->C_CloseAllSessions = w_CloseAllSessions;
	f->C_GetSessionInfo = w_GetSessionInfo;
	f->C_GetOperationState = w_GetOperationState;
	f->C_SetOperationState = w_SetOperationState;
	f->C_Login = w_Login;
	f->C_Logout = w_Logout;
	f->C_CreateObject = w_CreateObject;
	f->C_CopyObject = w_CopyObject;
	f->C_DestroyObject = w_DestroyObject;
	f->C_GetObjectSize = w_GetObjectSize;
	f->C_GetAttributeValue = w_GetAttributeValue;
	f->C_SetAttributeValue = w_SetAttributeValue;
	f->C_FindObjectsInit = w_FindObjectsInit;
	f->C_FindObjects = w_FindObjects;
	f->C_FindObjectsFinal = w_FindObjectsFinal;
	f->C_EncryptInit = w_EncryptInit;
	f->C_Encrypt = w_Encrypt;
	f->C_EncryptUpdate = w_EncryptUpdate;
	f->C_EncryptFinal = w_EncryptFinal;
	f->C_DecryptInit = w_DecryptInit;
	f->C_Decrypt = w_Decrypt;
	f->C_DecryptUpdate = w_DecryptUpdate;
	f->C_DecryptFinal = w_DecryptFinal;
	f->C_DigestInit = w_DigestInit;
	f->C_Digest = w_Digest;
	f->C_DigestUpdate = w_DigestUpdate;
	f->C_DigestKey = w_DigestKey;
	f->C_DigestFinal = w_DigestFinal;
	f->C_SignInit = w_SignInit;
	f->C_Sign = w_Sign;
	f->C_SignUpdate = w_SignUpdate;
	f->C_SignFinal = w_SignFinal;
	f->C_SignRecoverInit = w_SignRecoverInit;
	f->C_SignRecover = w_SignRecover;
	f->C_VerifyInit = w_VerifyInit;
	f->C_Verify = w_Verify;
	f->C_VerifyUpdate = w_VerifyUpdate;
	f->C_VerifyFinal = w_VerifyFinal;
	f->C_VerifyRecoverInit = w_VerifyRecoverInit;
	f->C_VerifyRecover = w_VerifyRecover;
	f->C_DigestEncryptUpdate = w_DigestEncryptUpdate;
	f->C_DecryptDigestUpdate = w_DecryptDigestUpdate;
	f->C_SignEncryptUpdate = w_SignEncryptUpdate;
	f->C_DecryptVerifyUpdate = w_DecryptVerifyUpdate;
	f->C_GenerateKey = w_GenerateKey;
	f->C_GenerateKeyPair = w_GenerateKeyPair;
	f->C_WrapKey = w_WrapKey;
	f->C_UnwrapKey = w_UnwrapKey;
	f->C_DeriveKey = w_DeriveKey;
	f->C_SeedRandom = w_SeedRandom;
	f->C_GenerateRandom = w_GenerateRandom;
	f->C_GetFunctionStatus = w_GetFunctionStatus;
	f->C_CancelFunction = w_CancelFunction;
	f->C_WaitForSlotEvent = w_WaitForSlotEvent;
}

CK_RV
C_GetFunctionList (struct ck_function_list **function_list)
{
	if (function_list == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_once (&once, load);
	if (load_failed)
		return CKR_GENERAL_ERROR;
	*function_list = &list;
	return CKR_OK;
}
