// Command testcluster runs a real Kubernetes control plane for secmetrics' tests and demo:
// an embedded etcd, kube-apiserver and kube-controller-manager, all built from the
// upstream sources of one pinned release and listening on 127.0.0.1 only.
//
// The binary is multi-call: `testcluster serve` is the supervisor (etcd in-process, the two
// Kubernetes components as child processes of this same binary), while
// `testcluster kube-apiserver ...` and `testcluster kube-controller-manager ...` run the
// upstream commands. Separate processes keep the components' global state (signal
// handlers, feature gates, metrics registries) apart, exactly as in a real cluster.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"

	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
)

// The operator's identity, as the Helm chart's ServiceAccount would authenticate.
const (
	operatorUser  = "system:serviceaccount:secmetrics-system:secmetrics"
	operatorGroup = "system:serviceaccounts"
)

func init() {
	// Children are started with Pdeathsig, which fires when the *thread* that forked them
	// exits. Pin main to one OS thread so that thread lives as long as the supervisor.
	runtime.LockOSThread()
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testcluster serve --dir DIR [--watch-pid PID] | kube-apiserver ARGS | kube-controller-manager ARGS")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "kube-apiserver":
		os.Args = append([]string{"kube-apiserver"}, os.Args[2:]...)
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Args = append([]string{"kube-controller-manager"}, os.Args[2:]...)
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "serve":
		if err := serve(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "testcluster:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "testcluster: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

// state is written to DIR/state.json once the control plane is ready.
type state struct {
	PID                int    `json:"pid"`
	Server             string `json:"server"`
	AdminKubeconfig    string `json:"adminKubeconfig"`
	OperatorKubeconfig string `json:"operatorKubeconfig"`
	AdminToken         string `json:"adminToken"`
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory for certificates, data, logs and kubeconfigs (required)")
	watchPID := fs.Int("watch-pid", 0, "shut down when this process exits (0: never)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--dir is required")
	}
	d, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(d, 0o700); err != nil {
		return err
	}
	os.Remove(filepath.Join(d, "state.json"))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *watchPID > 0 {
		ctx = watchProcess(ctx, *watchPID)
	}

	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]

	adminToken, err := randomToken()
	if err != nil {
		return err
	}
	operatorToken, err := randomToken()
	if err != nil {
		return err
	}
	if err := writeCerts(d); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	tokens := fmt.Sprintf("%s,admin,admin-uid,\"system:masters\"\n%s,%s,secmetrics-uid,\"%s\"\n",
		adminToken, operatorToken, operatorUser, operatorGroup)
	if err := os.WriteFile(filepath.Join(d, "tokens.csv"), []byte(tokens), 0o600); err != nil {
		return err
	}

	etcd, err := startEtcd(filepath.Join(d, "etcd"), etcdClient, etcdPeer)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()

	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	admin := filepath.Join(d, "admin.kubeconfig")
	operator := filepath.Join(d, "operator.kubeconfig")
	if err := writeKubeconfig(admin, server, filepath.Join(d, "ca.crt"), "admin", adminToken); err != nil {
		return err
	}
	if err := writeKubeconfig(operator, server, filepath.Join(d, "ca.crt"), "secmetrics", operatorToken); err != nil {
		return err
	}

	apiArgs := []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(etcdClient),
		"--cert-dir=" + filepath.Join(d, "apiserver-certs"),
		"--tls-cert-file=" + filepath.Join(d, "serving.crt"),
		"--tls-private-key-file=" + filepath.Join(d, "serving.key"),
		"--client-ca-file=" + filepath.Join(d, "ca.crt"),
		"--token-auth-file=" + filepath.Join(d, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + filepath.Join(d, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(d, "sa.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
		"--profiling=false",
		"--v=1",
	}
	apiProc, err := startChild(ctx, d, "kube-apiserver", apiArgs)
	if err != nil {
		return err
	}
	if err := waitReady(ctx, server, filepath.Join(d, "ca.crt"), adminToken, apiProc); err != nil {
		return fmt.Errorf("kube-apiserver did not become ready (see %s): %w", filepath.Join(d, "kube-apiserver.log"), err)
	}

	kcmArgs := []string{
		"--kubeconfig=" + admin,
		"--authentication-kubeconfig=" + admin,
		"--authorization-kubeconfig=" + admin,
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--leader-elect=false",
		"--service-account-private-key-file=" + filepath.Join(d, "sa.key"),
		"--root-ca-file=" + filepath.Join(d, "ca.crt"),
		"--use-service-account-credentials=false",
		"--cluster-cidr=10.1.0.0/16",
		"--profiling=false",
		"--v=1",
	}
	kcmProc, err := startChild(ctx, d, "kube-controller-manager", kcmArgs)
	if err != nil {
		return err
	}
	// The control plane is usable once the controller-manager has done visible work:
	// every namespace gets its "default" ServiceAccount from it.
	if err := waitDefaultServiceAccount(ctx, server, filepath.Join(d, "ca.crt"), adminToken, kcmProc); err != nil {
		return fmt.Errorf("kube-controller-manager did not start (see %s): %w", filepath.Join(d, "kube-controller-manager.log"), err)
	}

	st := state{PID: os.Getpid(), Server: server, AdminKubeconfig: admin, OperatorKubeconfig: operator, AdminToken: adminToken}
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(filepath.Join(d, "state.json.tmp"), b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(d, "state.json.tmp"), filepath.Join(d, "state.json")); err != nil {
		return err
	}
	fmt.Printf("control plane ready at %s\n", server)

	// Run until asked to stop, the watched process exits, or a component dies.
	select {
	case <-ctx.Done():
	case <-apiProc.done:
		return errors.New("kube-apiserver exited")
	case <-kcmProc.done:
		return errors.New("kube-controller-manager exited")
	case err := <-etcd.Err():
		return fmt.Errorf("etcd: %w", err)
	}
	kcmProc.stop()
	apiProc.stop()
	return nil
}

// watchProcess returns a context cancelled when pid no longer exists.
func watchProcess(parent context.Context, pid int) context.Context {
	ctx, cancel := context.WithCancel(parent)
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
					fmt.Fprintf(os.Stderr, "testcluster: watched process %d is gone, shutting down\n", pid)
					cancel()
					return
				}
			}
		}
	}()
	return ctx
}

type child struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func (c *child) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func startChild(ctx context.Context, dir, name string, args []string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{name}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the supervisor dies, however it dies, the kernel kills the component too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(c.done)
	}()
	return c, nil
}

func startEtcd(dir string, clientPort, peerPort int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.Name = "default"
	client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(filepath.Dir(dir), "etcd.log")}
	// Test data is disposable; skipping fsync makes the control plane several times faster.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("not ready after 60s")
	}
}

func httpClient(caFile string) (*http.Client, error) {
	pemBytes, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}, nil
}

// poll calls check every 200ms until it returns true, the context ends, or proc exits.
func poll(ctx context.Context, proc *child, timeout time.Duration, check func() bool) error {
	deadline := time.After(timeout)
	for {
		if check() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-proc.done:
			return errors.New("process exited")
		case <-deadline:
			return fmt.Errorf("timed out after %s", timeout)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func get(c *http.Client, url, token string) int {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func waitReady(ctx context.Context, server, caFile, token string, proc *child) error {
	c, err := httpClient(caFile)
	if err != nil {
		return err
	}
	return poll(ctx, proc, 120*time.Second, func() bool { return get(c, server+"/readyz", token) == http.StatusOK })
}

func waitDefaultServiceAccount(ctx context.Context, server, caFile, token string, proc *child) error {
	c, err := httpClient(caFile)
	if err != nil {
		return err
	}
	return poll(ctx, proc, 120*time.Second, func() bool {
		return get(c, server+"/api/v1/namespaces/default/serviceaccounts/default", token) == http.StatusOK
	})
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

func writeKubeconfig(path, server, caFile, user, token string) error {
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: testcluster
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: %s
  context:
    cluster: testcluster
    user: %s
current-context: %s
`, server, caFile, user, token, user, user, user)
	return os.WriteFile(path, []byte(cfg), 0o600)
}

// writeCerts creates a CA, a serving certificate for 127.0.0.1 and the in-cluster names,
// and the service-account signing key pair.
func writeCerts(dir string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "secmetrics-testcluster-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return err
	}
	files := map[string]*pem.Block{
		"ca.crt":      {Type: "CERTIFICATE", Bytes: caDER},
		"serving.crt": {Type: "CERTIFICATE", Bytes: srvDER},
		"sa.key":      {Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)},
		"sa.pub":      {Type: "PUBLIC KEY", Bytes: saPub},
	}
	srvKeyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		return err
	}
	files["serving.key"] = &pem.Block{Type: "EC PRIVATE KEY", Bytes: srvKeyDER}
	for name, block := range files {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			return err
		}
	}
	return nil
}
