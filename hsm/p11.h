// Declarations shared by keyward's own PKCS#11 calls (single.go, offload.go,
// offload.c): the parts of CK_FUNCTION_LIST and of the structures those
// calls use. Their layout has been fixed since PKCS#11 v2.01 (v2.40 for
// CK_GCM_PARAMS with ulIvBits, the layout SoftHSM2, p11-kit and the
// binding use).
#ifndef KEYWARD_P11_H
#define KEYWARD_P11_H

typedef unsigned long ck_ulong;

struct ck_mechanism {
	ck_ulong mechanism;
	void *parameter;
	ck_ulong parameter_len;
};

struct ck_gcm_params {
	unsigned char *iv;
	ck_ulong iv_len;
	ck_ulong iv_bits;
	unsigned char *aad;
	ck_ulong aad_len;
	ck_ulong tag_bits;
};

struct ck_pss_params {
	ck_ulong hash_alg;
	ck_ulong mgf;
	ck_ulong salt_len;
};

typedef ck_ulong (*init_fn)(ck_ulong session, struct ck_mechanism *mech, ck_ulong key);
typedef ck_ulong (*single_part_fn)(ck_ulong session, unsigned char *in, ck_ulong in_len,
				   unsigned char *out, ck_ulong *out_len);
typedef ck_ulong (*verify_fn)(ck_ulong session, unsigned char *in, ck_ulong in_len,
			      unsigned char *sig, ck_ulong sig_len);

// The head of CK_FUNCTION_LIST: the version, then the functions in the
// standard's order, up to C_Verify. Only the calls keyward makes itself
// are named.
struct function_list_head {
	unsigned char version[2];
	void *initialize_to_find_objects_final[29]; // C_Initialize .. C_FindObjectsFinal
	init_fn encrypt_init;
	single_part_fn encrypt;
	void *encrypt_update_final[2];              // C_EncryptUpdate, C_EncryptFinal
	init_fn decrypt_init;
	single_part_fn decrypt;
	void *decrypt_update_to_digest_final[7];    // C_DecryptUpdate .. C_DigestFinal
	init_fn sign_init;
	single_part_fn sign;
	void *sign_update_to_sign_recover[4];       // C_SignUpdate .. C_SignRecover
	init_fn verify_init;
	verify_fn verify;
};

// A device call handed to a worker thread (offload.c): Init with mech on
// key, then the single-part call (or C_Verify when verify is set) on
// in/out. The worker writes init_rv, rv and out_len, then id to the
// notification pipe.
struct offload_job {
	init_fn init;
	single_part_fn call;
	verify_fn verify;
	ck_ulong session, key;
	struct ck_mechanism mech;
	union {
		struct ck_gcm_params gcm;
		struct ck_pss_params pss;
	} params;
	unsigned char iv[16]; // the GCM IV the parameters point at
	unsigned char *in;
	ck_ulong in_len;
	unsigned char *out;
	ck_ulong out_len;
	ck_ulong init_rv, rv;
	long long ns; // how long the two calls took
	unsigned long long id;
	struct offload_job *next;
};

int offload_start(int notify_fd, int max_threads);
void offload_submit(struct offload_job *j);
void offload_threads(int *batch, int *other);

#endif
