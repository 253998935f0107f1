// criu_client drives criu through Debian's go-criu package, as runc and
// podman do: go-criu starts `criu swrk FD` from PATH (the test puts a
// `criu` link to stasis first in PATH). Every outcome is printed as one
// line for the test to check.
//
// Usage:
//
//	criu_client version
//	criu_client features
//	criu_client dump IMGDIR PID [--fail-post-dump]
//	criu_client restore IMGDIR
//	criu_client restore-sibling IMGDIR GOFILE
//	criu_client refused IMGDIR PID
//	criu_client predump IMGDIR PID [PARENT]
//	criu_client dump-parent IMGDIR PID PARENT
//	criu_client page-server-chld IMGDIR
//	criu_client dump-ps IMGDIR PID PORT
//	criu_client dump-lazy IMGDIR PID PORT
//	criu_client restore-lazy IMGDIR WORKDIR
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	criu "github.com/checkpoint-restore/go-criu/v5"
	"github.com/checkpoint-restore/go-criu/v5/rpc"
	"google.golang.org/protobuf/proto"
)

// recorder notes every notification, in order.
type recorder struct {
	seen         []string
	failPostDump bool
	pid          int32
}

func (r *recorder) note(s string) error { r.seen = append(r.seen, s); return nil }

func (r *recorder) PreDump() error { return r.note("pre-dump") }
func (r *recorder) PostDump() error {
	r.note("post-dump")
	if r.failPostDump {
		return errors.New("post-dump callback refuses")
	}
	return nil
}
func (r *recorder) PreRestore() error { return r.note("pre-restore") }
func (r *recorder) PostRestore(pid int32) error {
	r.pid = pid
	return r.note(fmt.Sprintf("post-restore:%d", pid))
}
func (r *recorder) NetworkLock() error   { return r.note("network-lock") }
func (r *recorder) NetworkUnlock() error { return r.note("network-unlock") }
func (r *recorder) SetupNamespaces(pid int32) error {
	return r.note(fmt.Sprintf("setup-namespaces:%d", pid))
}
func (r *recorder) PostSetupNamespaces() error { return r.note("post-setup-namespaces") }
func (r *recorder) PostResume() error          { return r.note("post-resume") }

func die(f string, a ...interface{}) {
	fmt.Printf("ERROR "+f+"\n", a...)
	os.Exit(1)
}

func openDir(p string) *os.File {
	d, err := os.Open(p)
	if err != nil {
		die("open %s: %v", p, err)
	}
	return d
}

// rawFeatures asks FEATURE_CHECK itself: go-criu's FeatureCheck returns
// the question, not the answer.
func rawFeatures() (*rpc.CriuFeatures, error) {
	fds, err := syscall.Socketpair(syscall.AF_LOCAL, syscall.SOCK_SEQPACKET, 0)
	if err != nil {
		return nil, err
	}
	cln := os.NewFile(uintptr(fds[0]), "cln")
	srv := os.NewFile(uintptr(fds[1]), "srv")
	defer cln.Close()
	cmd := exec.Command("criu", "swrk", "3")
	cmd.ExtraFiles = []*os.File{srv}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	srv.Close()
	t := rpc.CriuReqType_FEATURE_CHECK
	req := &rpc.CriuReq{Type: &t, Features: &rpc.CriuFeatures{
		MemTrack: proto.Bool(true), LazyPages: proto.Bool(true),
	}}
	b, _ := proto.Marshal(req)
	if _, err := cln.Write(b); err != nil {
		return nil, err
	}
	buf := make([]byte, 8192)
	n, err := cln.Read(buf)
	if err != nil {
		return nil, err
	}
	resp := &rpc.CriuResp{}
	if err := proto.Unmarshal(buf[:n], resp); err != nil {
		return nil, err
	}
	cln.Close()
	cmd.Wait()
	if !resp.GetSuccess() || resp.GetType() != t {
		return nil, fmt.Errorf("feature check failed: %s", resp.GetCrErrmsg())
	}
	return resp.GetFeatures(), nil
}

func main() {
	if len(os.Args) < 2 {
		die("usage")
	}
	c := criu.MakeCriu()
	switch os.Args[1] {
	case "version":
		v, err := c.GetCriuVersion()
		if err != nil {
			die("version: %v", err)
		}
		at, err := c.IsCriuAtLeast(30000)
		if err != nil {
			die("version: %v", err)
		}
		fmt.Printf("VERSION %d atleast3=%v\n", v, at)
	case "features":
		if _, err := c.FeatureCheck(&rpc.CriuFeatures{MemTrack: proto.Bool(true)}); err != nil {
			die("feature check: %v", err)
		}
		f, err := rawFeatures()
		if err != nil {
			die("features: %v", err)
		}
		fmt.Printf("FEATURES mem_track=%v/%v lazy_pages=%v/%v pidfd_store_set=%v\n",
			f.MemTrack != nil, f.GetMemTrack(), f.LazyPages != nil, f.GetLazyPages(), f.PidfdStore != nil)
	case "dump":
		dir := openDir(os.Args[2])
		pid, _ := strconv.Atoi(os.Args[3])
		r := &recorder{failPostDump: len(os.Args) > 4 && os.Args[4] == "--fail-post-dump"}
		opts := &rpc.CriuOpts{
			ImagesDirFd:  proto.Int32(int32(dir.Fd())),
			Pid:          proto.Int32(int32(pid)),
			LeaveRunning: proto.Bool(false),
			LogLevel:     proto.Int32(4),
			LogFile:      proto.String("dump.log"),
			ShellJob:     proto.Bool(false),
		}
		err := c.Dump(opts, r)
		fmt.Printf("NOTIFY %s\n", strings.Join(r.seen, ","))
		if err != nil {
			die("dump: %v", err)
		}
		fmt.Println("DUMPED")
	case "restore":
		dir := openDir(os.Args[2])
		r := &recorder{}
		opts := &rpc.CriuOpts{
			ImagesDirFd: proto.Int32(int32(dir.Fd())),
			LogLevel:    proto.Int32(4),
			LogFile:     proto.String("restore.log"),
		}
		err := c.Restore(opts, r)
		fmt.Printf("NOTIFY %s\n", strings.Join(r.seen, ","))
		if err != nil {
			die("restore: %v", err)
		}
		fmt.Println("RESTORED")
	case "predump", "dump-parent":
		dir := openDir(os.Args[2])
		pid, _ := strconv.Atoi(os.Args[3])
		opts := &rpc.CriuOpts{
			ImagesDirFd: proto.Int32(int32(dir.Fd())),
			Pid:         proto.Int32(int32(pid)),
			LogLevel:    proto.Int32(4),
			LogFile:     proto.String(os.Args[1] + ".log"),
			TrackMem:    proto.Bool(true),
		}
		if len(os.Args) > 4 {
			opts.ParentImg = proto.String(os.Args[4])
		}
		var err error
		if os.Args[1] == "predump" {
			err = c.PreDump(opts, nil)
		} else {
			err = c.Dump(opts, nil)
		}
		if err != nil {
			die("%s: %v", os.Args[1], err)
		}
		fmt.Println("DONE")
	case "page-server-chld":
		dir := openDir(os.Args[2])
		pid, port, err := c.StartPageServerChld(&rpc.CriuOpts{
			ImagesDirFd: proto.Int32(int32(dir.Fd())),
			LogLevel:    proto.Int32(4),
			LogFile:     proto.String("page-server.log"),
			Ps:          &rpc.CriuPageServerInfo{Address: proto.String("127.0.0.1")},
		})
		if err != nil {
			die("page server: %v", err)
		}
		fmt.Printf("PAGESERVER %d %d\n", pid, port)
	case "dump-ps", "dump-lazy":
		// The image goes to the page server at PORT, or (lazy) its pages
		// are served there.
		dir := openDir(os.Args[2])
		pid, _ := strconv.Atoi(os.Args[3])
		port, _ := strconv.Atoi(os.Args[4])
		opts := &rpc.CriuOpts{
			ImagesDirFd: proto.Int32(int32(dir.Fd())),
			Pid:         proto.Int32(int32(pid)),
			LogLevel:    proto.Int32(4),
			LogFile:     proto.String("dump.log"),
			Ps: &rpc.CriuPageServerInfo{
				Address: proto.String("127.0.0.1"),
				Port:    proto.Int32(int32(port)),
			},
		}
		if os.Args[1] == "dump-lazy" {
			opts.LazyPages = proto.Bool(true)
		}
		if err := c.Dump(opts, nil); err != nil {
			die("dump: %v", err)
		}
		fmt.Println("DUMPED")
	case "restore-lazy":
		dir := openDir(os.Args[2])
		work := openDir(os.Args[3])
		err := c.Restore(&rpc.CriuOpts{
			ImagesDirFd: proto.Int32(int32(dir.Fd())),
			WorkDirFd:   proto.Int32(int32(work.Fd())),
			LogLevel:    proto.Int32(4),
			LogFile:     proto.String("restore.log"),
			LazyPages:   proto.Bool(true),
		}, nil)
		if err != nil {
			die("restore: %v", err)
		}
		fmt.Println("RESTORED")
	case "restore-sibling":
		restoreSibling(c, os.Args[2], os.Args[3])
	case "refused":
		dir := openDir(os.Args[2])
		pid, _ := strconv.Atoi(os.Args[3])
		err := c.Dump(&rpc.CriuOpts{
			ImagesDirFd: proto.Int32(int32(dir.Fd())),
			Pid:         proto.Int32(int32(pid)),
			Tls:         proto.Bool(true),
		}, nil)
		fmt.Printf("DUMP-REFUSED %v\n", err)
		err = c.Restore(&rpc.CriuOpts{
			ImagesDirFd:  proto.Int32(int32(dir.Fd())),
			PidfdStoreSk: proto.Int32(5),
		}, nil)
		fmt.Printf("RESTORE-REFUSED %v\n", err)
	default:
		die("unknown command %s", os.Args[1])
	}
}

// restoreSibling restores as runc does (rst_sibling): the restored root is
// our child. It prints its parent, releases the program (writes GOFILE),
// waits for it, and prints its exit status.
func restoreSibling(c *criu.Criu, imgdir, gofile string) {
	dir := openDir(imgdir)
	r := &recorder{}
	err := c.Restore(&rpc.CriuOpts{
		ImagesDirFd: proto.Int32(int32(dir.Fd())),
		LogLevel:    proto.Int32(4),
		LogFile:     proto.String("restore.log"),
		RstSibling:  proto.Bool(true),
	}, r)
	if err != nil {
		die("restore: %v", err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.pid))
	if err != nil {
		die("restored pid %d: %v", r.pid, err)
	}
	ppid := -1
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "PPid:") {
			ppid, _ = strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(l, "PPid:")))
		}
	}
	fmt.Printf("RESTORED %d parent-is-me=%v\n", r.pid, ppid == os.Getpid())
	if err := os.WriteFile(gofile, []byte("1"), 0o644); err != nil {
		die("release go: %v", err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(int(r.pid), &ws, 0, nil); err != nil {
		die("wait4 %d: %v", r.pid, err)
	}
	fmt.Printf("EXIT %d signaled=%v\n", ws.ExitStatus(), ws.Signaled())
}
