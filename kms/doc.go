// Package kms holds the end-to-end tests of keywardd's Kubernetes KMS v2
// endpoint (kms_socket): kube-apiserver's own encryption-at-rest code
// (k8s.io/apiserver's encryptionconfig, a test-only dependency that is never
// linked into keywardd) drives a real keywardd on a real SoftHSM2 token.
// The endpoint itself is in package daemon.
package kms
