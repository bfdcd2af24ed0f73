# Sourced by scripts/cluster-e2e.sh and scripts/host-mode-cluster-e2e.sh: a
# Kubernetes control plane on loopback. `control_plane_up` makes a CA and the
# certificates with openssl, kubeconfigs for admin, controller-manager,
# scheduler and the node ($WORK/NAME.kubeconfig), and starts etcd (Debian's),
# kube-apiserver, kube-controller-manager and kube-scheduler. Expects from the
# caller: WORK, NODE, PIDS (the processes to stop), free_port, wait_for, step
# and bin (the path of a kube binary), KUBECTL. Sets PKI, APORT, KUBECONFIG and
# K (the kubectl command line). Also `kubelet_yaml`, the node's kubelet config.
control_plane_up() {
  # --- certificates (openssl) ----------------------------------------------------
  PKI="$WORK/pki"; mkdir -p "$PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=cri-imaged-e2e-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  cert() { # cert NAME SUBJECT [SAN]
    local ext="$WORK/pki/$1.ext"
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' >"$ext"
    [ -n "${3:-}" ] && echo "subjectAltName=$3" >>"$ext"
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$PKI/$1.key" -out "$PKI/$1.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 2 \
      -extfile "$ext" -out "$PKI/$1.crt" 2>/dev/null
  }
  cert apiserver "/CN=kube-apiserver" "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  cert admin "/O=system:masters/CN=e2e-admin"
  cert apiserver-kubelet "/O=system:masters/CN=kube-apiserver-kubelet-client"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  cert node "/O=system:nodes/CN=system:node:$NODE"
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  APORT="$(free_port)"
  kubeconfig() { # kubeconfig NAME -> $WORK/NAME.kubeconfig with NAME's client cert
    cat >"$WORK/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "https://127.0.0.1:$APORT", certificate-authority: "$PKI/ca.crt"}}]
users: [{name: $1, user: {client-certificate: "$PKI/$1.crt", client-key: "$PKI/$1.key"}}]
contexts: [{name: e2e, context: {cluster: e2e, user: $1}}]
current-context: e2e
EOF
  }
  for k in admin controller-manager scheduler node; do kubeconfig $k; done
  export KUBECONFIG="$WORK/admin.kubeconfig"
  K=("$KUBECTL" --kubeconfig "$KUBECONFIG")

  # --- control plane -------------------------------------------------------------
  step "control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler ($("$(bin kube-apiserver)" --version))"
  EPORT="$(free_port)"
  etcd --name e2e --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$EPORT" \
    --advertise-client-urls "http://127.0.0.1:$EPORT" --listen-peer-urls "http://127.0.0.1:$(free_port)" \
    >"$WORK/etcd.log" 2>&1 &
  PIDS+=($!)
  "$(bin kube-apiserver)" --etcd-servers "http://127.0.0.1:$EPORT" --bind-address 127.0.0.1 \
    --advertise-address 127.0.0.1 --secure-port "$APORT" --cert-dir "$WORK/apiserver" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" --client-ca-file "$PKI/ca.crt" \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer https://kubernetes.default.svc --service-cluster-ip-range 10.96.0.0/24 \
    --authorization-mode Node,RBAC --allow-privileged=true \
    --kubelet-client-certificate "$PKI/apiserver-kubelet.crt" --kubelet-client-key "$PKI/apiserver-kubelet.key" \
    >"$WORK/kube-apiserver.log" 2>&1 &
  PIDS+=($!)
  wait_for 120 "kube-apiserver /readyz" "${K[@]}" get --raw /readyz
  "$(bin kube-controller-manager)" --kubeconfig "$WORK/controller-manager.kubeconfig" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port "$(free_port)" --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --use-service-account-credentials=true >"$WORK/kube-controller-manager.log" 2>&1 &
  PIDS+=($!)
  "$(bin kube-scheduler)" --kubeconfig "$WORK/scheduler.kubeconfig" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port "$(free_port)" >"$WORK/kube-scheduler.log" 2>&1 &
  PIDS+=($!)
  "${K[@]}" get --raw /version | tr -d '\n '; echo
}

# kubelet_yaml FILE RUNTIME_SOCKET CA_FILE PORT [IMAGE_ENDPOINT]: the node's
# KubeletConfiguration (cgroupfs, x509 client auth, no image GC pressure);
# no IMAGE_ENDPOINT = containerd's own image service.
kubelet_yaml() {
  cat >"$1" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$2
${5:+imageServiceEndpoint: $5}
cgroupDriver: cgroupfs
failSwapOn: false
oomScoreAdj: 0
readOnlyPort: 0
port: $4
healthzPort: 0
address: 127.0.0.1
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: "$3"}}
authorization: {mode: AlwaysAllow}
evictionHard: {memory.available: "1Mi"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
syncFrequency: 5s
resolvConf: ""
EOF
}
