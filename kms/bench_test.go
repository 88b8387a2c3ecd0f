package kms

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	kmsapi "k8s.io/kms/apis/v2"
)

// BenchmarkKMS measures Encrypt and Decrypt through keywardd's KMS socket
// on the SoftHSM2 test token, as the apiserver calls them (a 32-byte seed),
// from 1 and 8 concurrent callers on one connection each; it reports the
// median and 99th percentile latency of the calls:
//
//	go test -run '^$' -bench BenchmarkKMS -benchtime 4000x ./kms/
func BenchmarkKMS(b *testing.B) {
	d := newDaemon(b, "k8s/bench")
	d.start()
	d.keyward("key", "create", d.key, "--type", "aes-256-gcm")
	enc, err := d.kmsClient.Encrypt(context.Background(), &kmsapi.EncryptRequest{Plaintext: make([]byte, 32)})
	if err != nil {
		b.Fatal(err)
	}
	calls := map[string]func(kmsapi.KeyManagementServiceClient) error{
		"Encrypt": func(c kmsapi.KeyManagementServiceClient) error {
			_, err := c.Encrypt(context.Background(), &kmsapi.EncryptRequest{Plaintext: make([]byte, 32), Uid: "bench"})
			return err
		},
		"Decrypt": func(c kmsapi.KeyManagementServiceClient) error {
			_, err := c.Decrypt(context.Background(), &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "bench"})
			return err
		},
	}
	for _, name := range []string{"Encrypt", "Decrypt"} {
		for _, callers := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/callers=%d", name, callers), func(b *testing.B) {
				clients := make([]kmsapi.KeyManagementServiceClient, callers)
				for i := range clients {
					clients[i] = d.newClient(b)
				}
				lat := runCallers(b, clients, calls[name])
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			})
		}
	}
}

// runCallers makes b.N calls, shared among the clients, each client on its
// own goroutine, and returns every call's latency.
func runCallers(b *testing.B, clients []kmsapi.KeyManagementServiceClient, call func(kmsapi.KeyManagementServiceClient) error) []time.Duration {
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	b.ResetTimer()
	for i, c := range clients {
		n := b.N / len(clients)
		if i < b.N%len(clients) {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, n)
			for range n {
				start := time.Now()
				if err := call(c); err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, time.Since(start))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	b.StopTimer()
	if len(lat) == 0 {
		b.Fatal("no call succeeded")
	}
	return lat
}
