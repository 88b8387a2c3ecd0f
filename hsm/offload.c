// Worker threads for PKCS#11 calls that wait on the device (see offload.go).
// A thread the Go runtime did not create holds no Go scheduler slot while a
// network HSM answers, so a call waiting for the device never delays Go code.

#define _GNU_SOURCE // SCHED_BATCH
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "p11.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t more = PTHREAD_COND_INITIALIZER;
static struct offload_job *head, *tail;
static int notify = -1, threads, idle, queued, max_threads;
static int batch_threads, other_threads; // started workers, by policy (batch_policy)

static long long now_ns(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

// run makes j's two calls and notes how long they took.
static void run(struct offload_job *j) {
	long long start = now_ns();
	j->init_rv = j->init(j->session, &j->mech, j->key);
	if (j->init_rv == 0) {
		if (j->verify != NULL)
			j->rv = j->verify(j->session, j->in, j->in_len, j->out, j->out_len);
		else
			j->rv = j->call(j->session, j->in, j->in_len, j->out, &j->out_len);
	}
	j->ns = now_ns() - start;
}

// take waits for a job. Workers never exit: a module may have left
// thread-local data with a destructor that must not run once a
// re-initialisation has unloaded it, and Go's own threads stay too.
static struct offload_job *take(void) {
	pthread_mutex_lock(&mu);
	idle++;
	while (head == NULL)
		pthread_cond_wait(&more, &mu);
	idle--;
	queued--;
	struct offload_job *j = head;
	head = j->next;
	if (head == NULL)
		tail = NULL;
	pthread_mutex_unlock(&mu);
	return j;
}

// announce tells the Go side job id is done. 8 bytes are written whole to
// a pipe (PIPE_BUF), and the reader drains it, so it never fills with at
// most the job count in it. Any other failure would leave a caller waiting
// for ever: the process stops instead, as the Go side does when it cannot
// read the pipe.
static void announce(unsigned long long id) {
	for (;;) {
		ssize_t n = write(notify, &id, sizeof id);
		if (n == (ssize_t)sizeof id)
			return;
		if (n < 0 && errno == EINTR)
			continue;
		abort();
	}
}

// batch_policy puts the calling worker under SCHED_BATCH, and counts
// whether it could. A worker whose device call has answered then does not
// preempt the thread running on its CPU, which on a busy machine is often
// one of Go's, holding a scheduler slot that connections, handlers and the
// audit writer wait for (on 2 cores shared with the device, 64 callers at a
// 1 ms round trip: 3-10% more operations a second, 8-14% less CPU per
// operation; the same p99 latency). The worker keeps its fair share of the
// CPU. Best effort: keyward.service's seccomp filter refuses
// sched_setscheduler (with EPERM) unless a drop-in allows it; the worker
// then keeps the policy it started with.
static void batch_policy(void) {
	struct sched_param sp = {0};
	int ok = sched_setscheduler(0, SCHED_BATCH, &sp) == 0;
	pthread_mutex_lock(&mu);
	if (ok)
		batch_threads++;
	else
		other_threads++;
	pthread_mutex_unlock(&mu);
}

static void *worker(void *arg) {
	(void)arg;
	batch_policy();
	// Started with every signal blocked (offload_submit): signals sent to
	// the process are for the Go runtime's threads. A fault in the module
	// is let through, for Go's crash report.
	sigset_t faults;
	sigemptyset(&faults);
	sigaddset(&faults, SIGSEGV);
	sigaddset(&faults, SIGBUS);
	sigaddset(&faults, SIGFPE);
	sigaddset(&faults, SIGILL);
	pthread_sigmask(SIG_UNBLOCK, &faults, NULL);
	for (;;) {
		struct offload_job *j = take();
		run(j);
		unsigned long long id = j->id;
		announce(id);
	}
	return NULL;
}

// offload_start sets the pipe finished jobs are announced on and the
// number of worker threads.
int offload_start(int notify_fd, int max) {
	pthread_mutex_lock(&mu);
	notify = notify_fd;
	max_threads = max;
	pthread_mutex_unlock(&mu);
	return 0;
}

// offload_threads reports the workers started, by scheduling policy.
void offload_threads(int *batch, int *other) {
	pthread_mutex_lock(&mu);
	*batch = batch_threads;
	*other = other_threads;
	pthread_mutex_unlock(&mu);
}

// offload_submit queues j and starts a worker if none is idle. If no
// thread can be started, a running worker takes j when it is free: with
// none running the job would wait forever, so then it runs here.
void offload_submit(struct offload_job *j) {
	j->next = NULL;
	pthread_mutex_lock(&mu);
	if (tail != NULL)
		tail->next = j;
	else
		head = j;
	tail = j;
	queued++;
	// A worker per queued job: an idle one signalled may not have taken
	// an earlier job yet.
	int start = queued > idle && threads < max_threads;
	if (start)
		threads++;
	pthread_mutex_unlock(&mu);
	pthread_cond_signal(&more);
	if (!start)
		return;
	pthread_attr_t attr;
	pthread_t t;
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old); // the new thread starts with them blocked
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	int err = pthread_create(&t, &attr, worker, NULL);
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err == 0)
		return;
	pthread_mutex_lock(&mu);
	threads--;
	int none = threads == 0;
	pthread_mutex_unlock(&mu);
	// No worker runs and none can start: run the queue here.
	while (none) {
		pthread_mutex_lock(&mu);
		struct offload_job *k = head;
		if (k != NULL) {
			queued--;
			head = k->next;
			if (head == NULL)
				tail = NULL;
		}
		pthread_mutex_unlock(&mu);
		if (k == NULL)
			break;
		run(k);
		announce(k->id);
	}
}
