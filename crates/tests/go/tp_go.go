// tp_go: a Go program carries on after checkpoint/restore.
//
// Usage: tp_go WORKDIR [--procs N] [--run-ms N] [--corrupt]
//
// Built by the harness with Debian's golang (`go build`), no cgo, no
// modules. It follows the ready/go/result protocol of the stasis test
// programs (crates/tests/src/lib.rs): it sets up its state, writes
// WORK/ready, waits for WORK/go, verifies, and writes WORK/result.
//
// State kept running across the checkpoint (everything counts, so the
// checks after go see whether it still moves):
//   - GOMAXPROCS = --procs (default 4) and several Ms (threads); every
//     thread seen at ready must still exist after go;
//   - two goroutines spinning in tight loops with no function calls: they
//     can only be stopped by asynchronous preemption (SIGURG, delivered on
//     each M's own sigaltstack), which every GC stop-the-world needs;
//   - a goroutine calling time.Now() in a loop (vDSO clock_gettime, whose
//     address the runtime parsed once at start), checking monotonic time
//     never goes back;
//   - three goroutines contending for one sync.Mutex (futexes) and a pair
//     playing ping-pong on an unbuffered channel;
//   - an os.Pipe (nonblocking, parked on the netpoller's epoll): a writer
//     sends a numbered stream, with bursts larger than the pipe so it
//     waits for writability, and a reader checks every number arrives
//     once and in order;
//   - a time.Ticker and goroutines sleeping in time.Sleep;
//   - a goroutine churning garbage (a linked list rebuilt and checked);
//   - a 50,000-entry map and an 8 MiB slice, hashed before ready.
//
// After go it runs for --run-ms (default 2000): counters must increase in
// both halves; runtime.GC() and debug.FreeOSMemory() must complete (a GC
// needs every spinning goroutine preempted); SIGUSR1 sent to every thread
// with tgkill must arrive (handled on that M's altstack); the pipe stream
// must be intact; the hash must match. `--corrupt` changes one map entry
// after go: the hash check must fail.
package main

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const nSpin = 2

// Counters, each on its own cache line.
type counter struct {
	n uint64
	_ [56]byte
}

var (
	spins    [nSpin]counter
	vdso     counter
	ticks    counter
	sleeps   counter
	pingpong counter
	pipeSeq  counter
	garbage  counter
	mutexN   counter // mutex-protected total, mirrored atomically

	mu      sync.Mutex
	shared  uint64
	timeBad uint32
	pipeBad atomic.Value // string
	listBad atomic.Value // string: ping-pong or garbage list
)

func spin(i int) {
	var x uint64
	for {
		x++
		if x&0xfffff == 0 {
			atomic.AddUint64(&spins[i].n, 1)
		}
	}
}

func clock() {
	last := time.Now()
	for i := 0; ; i++ {
		now := time.Now()
		if now.Before(last) {
			atomic.StoreUint32(&timeBad, 1)
		}
		last = now
		atomic.AddUint64(&vdso.n, 1)
		if i%20000 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
}

func locker() {
	for i := 0; ; i++ {
		mu.Lock()
		shared++
		atomic.StoreUint64(&mutexN.n, shared)
		mu.Unlock()
		if i%500 == 0 {
			time.Sleep(200 * time.Microsecond)
		}
	}
}

func ping(c, d chan uint64) {
	for v := uint64(0); ; v++ {
		c <- v
		if w := <-d; w != v+1 {
			listBad.Store(fmt.Sprintf("ping-pong got %d after %d", w, v))
		}
		atomic.AddUint64(&pingpong.n, 1)
	}
}

func pong(c, d chan uint64) {
	for v := range c {
		d <- v + 1
	}
}

func pipeWriter(w *os.File) {
	var seq uint64
	buf := make([]byte, 0, 1<<19)
	for round := 0; ; round++ {
		n := 64
		if round%50 == 0 {
			n = 40000 // 320 KB: more than the pipe holds, the writer waits
		}
		buf = buf[:0]
		for i := 0; i < n; i++ {
			buf = binary.LittleEndian.AppendUint64(buf, seq)
			seq++
		}
		if _, err := w.Write(buf); err != nil {
			pipeBad.Store("pipe write: " + err.Error())
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func pipeReader(r *os.File) {
	var next uint64
	var part []byte
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if err != nil {
			pipeBad.Store("pipe read: " + err.Error())
			return
		}
		part = append(part, buf[:n]...)
		for len(part) >= 8 {
			v := binary.LittleEndian.Uint64(part)
			if v != next {
				pipeBad.Store(fmt.Sprintf("pipe delivered %d, expected %d", v, next))
				return
			}
			next++
			part = part[8:]
		}
		atomic.StoreUint64(&pipeSeq.n, next)
	}
}

func ticker() {
	t := time.NewTicker(5 * time.Millisecond)
	for range t.C {
		atomic.AddUint64(&ticks.n, 1)
	}
}

func sleeper(d time.Duration) {
	for {
		time.Sleep(d)
		atomic.AddUint64(&sleeps.n, 1)
	}
}

type node struct {
	v    uint64
	next *node
	pad  [6]uint64
}

func churn() {
	for round := uint64(1); ; round++ {
		var head *node
		for i := uint64(0); i < 2000; i++ {
			head = &node{v: round*100000 + i, next: head}
		}
		var sum, want uint64
		for n := head; n != nil; n = n.next {
			sum += n.v
		}
		for i := uint64(0); i < 2000; i++ {
			want += round*100000 + i
		}
		if sum != want {
			listBad.Store(fmt.Sprintf("list of round %d sums to %d, not %d", round, sum, want))
		}
		atomic.AddUint64(&garbage.n, 1)
		if round%8 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
}

var (
	table = map[int]string{}
	slab  []uint64
)

func digest() string {
	h := sha256.New()
	keys := make([]int, 0, len(table))
	for k := range table {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "%d=%s;", k, table[k])
	}
	b := make([]byte, 8)
	for _, v := range slab {
		binary.LittleEndian.PutUint64(b, v)
		h.Write(b)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func tids() []int {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		if t, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, t)
		}
	}
	return out
}

type snapshot map[string]uint64

func snap() snapshot {
	s := snapshot{
		"vdso":      atomic.LoadUint64(&vdso.n),
		"ticks":     atomic.LoadUint64(&ticks.n),
		"sleeps":    atomic.LoadUint64(&sleeps.n),
		"mutex":     atomic.LoadUint64(&mutexN.n),
		"ping-pong": atomic.LoadUint64(&pingpong.n),
		"pipe":      atomic.LoadUint64(&pipeSeq.n),
		"garbage":   atomic.LoadUint64(&garbage.n),
	}
	for i := range spins {
		s[fmt.Sprintf("spin%d", i)] = atomic.LoadUint64(&spins[i].n)
	}
	return s
}

func (a snapshot) stalled(b snapshot) []string {
	var out []string
	for k, v := range a {
		if b[k] <= v {
			out = append(out, fmt.Sprintf("%s stuck at %d", k, v))
		}
	}
	sort.Strings(out)
	return out
}

var work string

func writeAtomically(name, text string) {
	tmp := filepath.Join(work, name+".tmp")
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "tp_go:", err)
		os.Exit(2)
	}
	if err := os.Rename(tmp, filepath.Join(work, name)); err != nil {
		fmt.Fprintln(os.Stderr, "tp_go:", err)
		os.Exit(2)
	}
}

func finish(fails []string) {
	if len(fails) == 0 {
		writeAtomically("result", "PASS\n")
		os.Exit(0)
	}
	writeAtomically("result", "FAIL: "+strings.Join(fails, "; ")+"\n")
	os.Exit(1)
}

func waitGo() {
	for {
		b, err := os.ReadFile(filepath.Join(work, "go"))
		if err == nil && len(b) > 0 && b[0] == '1' {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// withTimeout runs f in a goroutine and reports whether it returned in time.
func withTimeout(d time.Duration, f func()) bool {
	done := make(chan struct{})
	go func() {
		f()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: tp_go WORKDIR [--procs N] [--run-ms N] [--corrupt]")
		os.Exit(2)
	}
	work = os.Args[1]
	procs, runMs, corrupt := 4, 2000, false
	for i := 2; i < len(os.Args); i++ {
		switch os.Args[i] {
		case "--corrupt":
			corrupt = true
		case "--procs", "--run-ms":
			if i+1 >= len(os.Args) {
				fmt.Fprintln(os.Stderr, "tp_go: missing value for", os.Args[i])
				os.Exit(2)
			}
			v, err := strconv.Atoi(os.Args[i+1])
			if err != nil || v <= 0 {
				fmt.Fprintln(os.Stderr, "tp_go: bad value for", os.Args[i])
				os.Exit(2)
			}
			if os.Args[i] == "--procs" {
				procs = v
			} else {
				runMs = v
			}
			i++
		default:
			fmt.Fprintln(os.Stderr, "tp_go: unknown option", os.Args[i])
			os.Exit(2)
		}
	}
	runtime.GOMAXPROCS(procs)
	var fails []string

	// Data, hashed before ready.
	x := uint64(0x9e3779b97f4a7c15)
	for i := 0; i < 50000; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		table[i*7] = strconv.FormatUint(x, 36)
	}
	slab = make([]uint64, 1<<20)
	for i := range slab {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		slab[i] = x
	}
	before := digest()

	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)

	for i := 0; i < nSpin; i++ {
		go spin(i)
	}
	go clock()
	for i := 0; i < 3; i++ {
		go locker()
	}
	c, d := make(chan uint64), make(chan uint64)
	go ping(c, d)
	go pong(c, d)
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tp_go: pipe:", err)
		os.Exit(2)
	}
	go pipeWriter(w)
	go pipeReader(r)
	go ticker()
	go sleeper(3 * time.Millisecond)
	go sleeper(50 * time.Millisecond)
	go churn()

	// Everything has moved at least once (so all of it is live at the dump).
	zero := snap()
	for k := range zero {
		zero[k] = 0
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(zero.stalled(snap())) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s := zero.stalled(snap()); len(s) > 0 {
		fails = append(fails, "before ready: "+strings.Join(s, ", "))
	}
	threadsBefore := tids()
	if len(threadsBefore) < 3 {
		fails = append(fails, fmt.Sprintf("only %d threads before ready", len(threadsBefore)))
	}
	startMono := time.Now()

	writeAtomically("ready", fmt.Sprintf("READY %d\n", os.Getpid()))
	waitGo()

	if corrupt {
		table[7*12345] = "corrupted"
	}
	half := time.Duration(runMs) * time.Millisecond / 2
	s0 := snap()
	time.Sleep(half)
	s1 := snap()
	if s := s0.stalled(s1); len(s) > 0 {
		fails = append(fails, "first half: "+strings.Join(s, ", "))
	}
	// A GC cycle: stops the world, so it must preempt the spinners.
	if !withTimeout(20*time.Second, func() {
		runtime.GC()
		debug.FreeOSMemory()
	}) {
		fails = append(fails, "runtime.GC() did not complete in 20 s")
	}
	// Every thread takes a signal (on its own sigaltstack) and the
	// runtime passes it on.
	after := tids()
	have := map[int]bool{}
	for _, t := range after {
		have[t] = true
	}
	for _, t := range threadsBefore {
		if !have[t] {
			fails = append(fails, fmt.Sprintf("thread %d is gone", t))
		}
	}
	pid := os.Getpid()
	for _, t := range after {
		if err := syscall.Tgkill(pid, t, syscall.SIGUSR1); err != nil {
			if err == syscall.ESRCH {
				continue // an M that exited meanwhile
			}
			fails = append(fails, fmt.Sprintf("tgkill %d: %v", t, err))
			continue
		}
		select {
		case <-usr1:
		case <-time.After(5 * time.Second):
			fails = append(fails, fmt.Sprintf("SIGUSR1 to thread %d never arrived", t))
		}
	}
	time.Sleep(half)
	s2 := snap()
	if s := s1.stalled(s2); len(s) > 0 {
		fails = append(fails, "second half: "+strings.Join(s, ", "))
	}
	if atomic.LoadUint32(&timeBad) != 0 {
		fails = append(fails, "time.Now() went backwards")
	}
	if since := time.Since(startMono); since < half*2 {
		fails = append(fails, fmt.Sprintf("monotonic time since ready is only %v", since))
	}
	if v, ok := pipeBad.Load().(string); ok {
		fails = append(fails, v)
	}
	if v, ok := listBad.Load().(string); ok {
		fails = append(fails, v)
	}
	mu.Lock()
	if shared != atomic.LoadUint64(&mutexN.n) {
		fails = append(fails, "mutex-protected counter differs from its mirror")
	}
	mu.Unlock()
	if runtime.GOMAXPROCS(0) != procs {
		fails = append(fails, fmt.Sprintf("GOMAXPROCS is %d, not %d", runtime.GOMAXPROCS(0), procs))
	}
	if after := digest(); after != before {
		fails = append(fails, "map and slice hash differs: "+before[:16]+" before, "+after[:16]+" after")
	}
	finish(fails)
}
