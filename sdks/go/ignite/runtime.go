package ignite

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

const (
	// exitChannel is the exit status when the framing channel breaks (the agent reports the
	// process as crashed); as the Rust SDK's.
	exitChannel = 70
	// exitUsage is the exit status when the binary is started by hand on a terminal.
	exitUsage = 64
)

// Main serves requests with handler until the agent closes the channel (or sends Shutdown),
// then exits the process. It never returns.
//
// Before any request it moves the framing channel off fds 0 and 1 to private close-on-exec
// descriptors, points fd 1 at fd 2 (so fmt.Println and os.Stdout write log lines, never a
// corrupt frame) and fd 0 at an empty pipe. In the sandbox the handler is pid 1 of its own pid
// namespace, where a signal without a handler is ignored: there SIGTERM, SIGINT and SIGHUP end
// the process with status 0. Unless GOMAXPROCS is in the environment (or the program set it
// before calling Main), goroutines run on one processor, as the Rust SDK's runtime is single
// threaded: see oneProcessor.
func Main(handler Handler) {
	if handler == nil {
		fmt.Fprintln(os.Stderr, "ignite: ignite.Main was given a nil handler")
		os.Exit(exitUsage)
	}
	if isTerminal(0) {
		fmt.Fprintln(os.Stderr, "this is an Ignite handler: it speaks the runtime protocol on "+
			"stdin/stdout and is started by the platform. Deploy it with `dodil ignite draft "+
			"save/publish --runtime go`, or try it locally with `dodil ignite run <dir> -p '{...}'`.")
		os.Exit(exitUsage)
	}
	in, out, err := takeStdio()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ignite: cannot set up the runtime channel: %v\n", err)
		os.Exit(exitChannel)
	}
	if os.Getpid() == 1 {
		exitOnTermination()
	}
	oneProcessor()
	s := &server{in: in, out: out, handler: handler}
	s.answer(appendHello(make([]byte, 0, 32), Version))
	os.Exit(s.serve())
}

// oneProcessor runs goroutines on one processor (GOMAXPROCS 1), unless the environment
// (GOMAXPROCS) or the program (runtime.GOMAXPROCS before Main) chose otherwise. Like the Rust
// SDK's single-threaded runtime: requests still run concurrently (each on its goroutine,
// interleaved whenever one waits), an instance gets one CPU's quota in the sandbox anyway, and
// with one processor a request is read, run and answered on one thread, where several
// processors hand each request between threads (a wake-up of tens of microseconds on a VM).
func oneProcessor() {
	if _, set := os.LookupEnv("GOMAXPROCS"); set {
		return
	}
	if runtime.GOMAXPROCS(0) == runtime.NumCPU() {
		runtime.GOMAXPROCS(1)
	}
}

// keepStdio holds the standard files Go opened at start-up: a collected *os.File closes its
// descriptor, and fds 0 and 1 now belong to the log pipe and the empty pipe.
var keepStdio []*os.File

// takeStdio moves the channel off fds 0 and 1 (see Main) and returns it.
func takeStdio() (in, out *os.File, err error) {
	inFd, err := dupCloexec(0)
	if err != nil {
		return nil, nil, err
	}
	outFd, err := dupCloexec(1)
	if err != nil {
		return nil, nil, err
	}
	if err := syscall.Dup2(2, 1); err != nil {
		return nil, nil, fmt.Errorf("dup2(2, 1): %w", err)
	}
	var empty [2]int
	if err := syscall.Pipe2(empty[:], syscall.O_CLOEXEC); err != nil {
		return nil, nil, fmt.Errorf("pipe2: %w", err)
	}
	syscall.Close(empty[1])
	// dup2 leaves the new fd 0 inheritable, as a stdin is.
	if err := syscall.Dup2(empty[0], 0); err != nil {
		return nil, nil, fmt.Errorf("dup2(pipe, 0): %w", err)
	}
	syscall.Close(empty[0])
	// Non-blocking, the channel is read and written through Go's poller: a goroutine waiting
	// on it holds no thread.
	for _, fd := range []int{inFd, outFd} {
		if err := syscall.SetNonblock(fd, true); err != nil {
			return nil, nil, fmt.Errorf("setting the channel non-blocking: %w", err)
		}
	}
	keepStdio = append(keepStdio, os.Stdin, os.Stdout)
	os.Stdin = os.NewFile(0, "/dev/stdin")
	os.Stdout = os.NewFile(1, "/dev/stdout")
	return os.NewFile(uintptr(inFd), "ignite-channel-in"), os.NewFile(uintptr(outFd), "ignite-channel-out"), nil
}

// dupCloexec duplicates fd onto a close-on-exec descriptor above the standard three.
func dupCloexec(fd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 3)
	if e != 0 {
		return -1, fmt.Errorf("duplicating fd %d: %w", fd, e)
	}
	return int(r), nil
}

func isTerminal(fd int) bool {
	var t syscall.Termios
	_, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TCGETS, uintptr(unsafe.Pointer(&t)))
	return e == 0
}

// exitOnTermination makes SIGTERM, SIGINT and SIGHUP end the process with status 0: as pid 1
// of a pid namespace, Go's default (re-raising the signal) would not end it.
func exitOnTermination() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() {
		<-c
		os.Exit(0)
	}()
}

// server serves one channel.
type server struct {
	in      *os.File
	out     *os.File
	handler Handler
	// Held while a frame is written: a frame is written whole.
	mu sync.Mutex

	envMu   sync.Mutex
	envList [][2]string
	envMap  map[string]string
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// write writes one frame whole.
func (s *server) write(frame []byte) error {
	s.mu.Lock()
	_, err := s.out.Write(frame)
	s.mu.Unlock()
	return err
}

// answer writes a request's answer; the process exits if the agent is gone.
func (s *server) answer(frame []byte) {
	if err := s.write(frame); err != nil {
		// Nobody is left to answer.
		fmt.Fprintf(os.Stderr, "ignite: the framing channel broke writing an answer: %v\n", err)
		os.Exit(exitChannel)
	}
}

// log sends a Log frame; a failed write means the agent is gone, and the request's own answer
// fails the same way and ends the process.
func (s *server) log(id uint64, line string) {
	bp := bufPool.Get().(*[]byte)
	*bp = appendLog((*bp)[:0], id, line)
	_ = s.write(*bp)
	bufPool.Put(bp)
}

// serve reads requests and runs each on a goroutine of its own; returns the exit status.
func (s *server) serve() int {
	buf := make([]byte, 64<<10)
	start, end := 0, 0
	for {
		need := headerLen
		for end-start >= headerLen {
			n, err := checkHeader(buf[start : start+headerLen])
			if err != nil {
				return s.fail(err)
			}
			if end-start < headerLen+n {
				need = headerLen + n
				break
			}
			variant, inv, err := decodeFrame(buf[start+headerLen : start+headerLen+n])
			start += headerLen + n
			switch {
			case err != nil:
				return s.fail(err)
			case variant == frameInvoke:
				go s.run(inv)
			case variant == frameShutdown:
				return 0
			default:
				return s.fail(fmt.Errorf("the agent sent a frame a handler does not expect (variant %d)", variant))
			}
		}
		if start == end {
			start, end = 0, 0
		}
		if len(buf)-start < need || end == len(buf) {
			if len(buf) < need {
				grown := make([]byte, need+need/4)
				end = copy(grown, buf[start:end])
				buf = grown
			} else {
				end = copy(buf, buf[start:end])
			}
			start = 0
		}
		n, err := s.in.Read(buf[end:])
		end += n
		if n == 0 && err != nil {
			if err == io.EOF && end == start {
				return 0
			}
			if err == io.EOF {
				return s.fail(errTruncated)
			}
			return s.fail(fmt.Errorf("framing channel I/O error: %w", err))
		}
	}
}

func (s *server) fail(err error) int {
	fmt.Fprintf(os.Stderr, "ignite: %v\n", err)
	return exitChannel
}

// env is the request's environment as a map: the same map while it does not change, which is
// also set in the process environment.
func (s *server) env(pairs [][2]string) map[string]string {
	s.envMu.Lock()
	defer s.envMu.Unlock()
	if s.envMap != nil && samePairs(pairs, s.envList) {
		return s.envMap
	}
	m := make(map[string]string, len(pairs))
	for _, p := range pairs {
		m[p[0]] = p[1]
		if v, ok := os.LookupEnv(p[0]); !ok || v != p[1] {
			os.Setenv(p[0], p[1])
		}
	}
	s.envList, s.envMap = pairs, m
	return m
}

func samePairs(a, b [][2]string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// run answers one request.
func (s *server) run(inv *invoke) {
	ctx := &Context{
		id:          inv.id,
		executionID: inv.executionID,
		functionID:  inv.functionID,
		env:         s.env(inv.env),
		srv:         s,
	}
	if inv.deadlineUnixMs != 0 {
		ctx.deadline = time.UnixMilli(int64(inv.deadlineUnixMs))
	}
	req := &Request{
		method:  inv.method,
		path:    inv.path,
		query:   inv.query,
		headers: inv.headers,
		body:    inv.body,
	}
	bp := bufPool.Get().(*[]byte)
	answered := false
	defer func() {
		ctx.end()
		if !answered {
			s.answer(panicFrame((*bp)[:0], inv.id, recover()))
		}
		// A buffer grown for a large answer is left to the collector.
		if cap(*bp) <= 1<<20 {
			bufPool.Put(bp)
		}
	}()
	v, err := s.handler(req, ctx)
	// Encoding runs the value's MarshalJSON methods, which may panic too.
	frame := replyFrame((*bp)[:0], inv.id, v, err)
	answered = true
	s.answer(frame)
	*bp = frame
}

// replyFrame appends the frame that answers request id.
func replyFrame(b []byte, id uint64, v any, err error) []byte {
	if err != nil {
		return appendError(b, id, kindHandler, statusOf(err), err.Error())
	}
	r, err := toResponse(v)
	if err != nil {
		return appendError(b, id, kindHandler, 500, err.Error())
	}
	status := uint16(500)
	switch {
	case r.Status == 0:
		status = 200
	case r.Status >= 100 && r.Status <= 999:
		status = uint16(r.Status)
	}
	frame, ok := appendResponse(b, id, status, r.Headers, r.Body)
	if !ok {
		return appendError(b, id, kindHandler, 500, "the handler's response of "+
			strconv.Itoa(len(r.Body))+" bytes exceeds the "+strconv.Itoa(maxFrameLen)+
			"-byte limit of a frame")
	}
	return frame
}

// panicFrame reports a recovered panic (p), its stack going to stderr.
func panicFrame(b []byte, id uint64, p any) []byte {
	var message string
	if p == nil {
		// The deferred call ran without a panic: the handler's goroutine ended early.
		message = "the handler called runtime.Goexit before returning"
	} else {
		message = "the handler panicked: " + panicText(p)
	}
	os.Stderr.Write(append([]byte("panic: "+panicText(p)+"\n\n"), debug.Stack()...))
	return appendError(b, id, kindPanic, 500, message)
}

func panicText(p any) string {
	switch v := p.(type) {
	case nil:
		return "runtime.Goexit"
	case error:
		return v.Error()
	case fmt.Stringer:
		return v.String()
	case string:
		return v
	}
	return fmt.Sprint(p)
}
