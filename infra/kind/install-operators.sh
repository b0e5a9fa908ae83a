#!/usr/bin/env bash
# Install the operators the manifests need, at the pinned versions of lib.sh, from their published
# release manifests (Helm for Strimzi): Knative Serving (+ Kourier) and Eventing with the Kafka
# extension (KafkaSource, KafkaSink), KEDA, Strimzi, the Altinity ClickHouse operator and ECK.
# Safe to run again.
set -euo pipefail
# shellcheck source=infra/kind/lib.sh
source "$(dirname "$0")/lib.sh"
require helm

knative_serving=https://github.com/knative/serving/releases/download/$KNATIVE_VERSION
knative_kourier=https://github.com/knative-extensions/net-kourier/releases/download/$KNATIVE_VERSION
knative_eventing=https://github.com/knative/eventing/releases/download/$KNATIVE_VERSION
knative_kafka=https://github.com/knative-extensions/eventing-kafka-broker/releases/download/$KNATIVE_VERSION

wait_for_deployments() {
  kubectl wait deployment --all --namespace "$1" --for=condition=Available --timeout=10m
}

step "Knative Serving $KNATIVE_VERSION with Kourier"
kubectl apply -f "$knative_serving/serving-crds.yaml"
kubectl wait crd --all --for=condition=Established --timeout=2m
kubectl apply -f "$knative_serving/serving-core.yaml"
kubectl apply -f "$knative_kourier/kourier.yaml"
kubectl patch configmap/config-network --namespace knative-serving --type merge \
  --patch '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
# Routes as http://<service>.<namespace>.127.0.0.1.sslip.io (docs/deployment.md: port-forward).
kubectl patch configmap/config-domain --namespace knative-serving --type merge \
  --patch '{"data":{"127.0.0.1.sslip.io":""}}'
wait_for_deployments knative-serving
wait_for_deployments kourier-system

step "Knative Eventing $KNATIVE_VERSION with KafkaSource and KafkaSink"
kubectl apply -f "$knative_eventing/eventing-crds.yaml"
kubectl wait crd --all --for=condition=Established --timeout=2m
kubectl apply -f "$knative_eventing/eventing-core.yaml"
kubectl apply -f "$knative_kafka/eventing-kafka-controller.yaml"
kubectl apply -f "$knative_kafka/eventing-kafka-source.yaml"
kubectl apply -f "$knative_kafka/eventing-kafka-sink.yaml"
wait_for_deployments knative-eventing

step "KEDA $KEDA_VERSION"
# Server-side apply: KEDA's CRDs are too large for the last-applied annotation.
kubectl apply --server-side \
  -f "https://github.com/kedacore/keda/releases/download/v$KEDA_VERSION/keda-$KEDA_VERSION.yaml"
wait_for_deployments keda

step "Strimzi $STRIMZI_VERSION"
helm upgrade --install strimzi oci://quay.io/strimzi-helm/strimzi-kafka-operator \
  --kube-context "kind-$CLUSTER_NAME" --version "$STRIMZI_VERSION" \
  --namespace strimzi --create-namespace --set watchAnyNamespace=true --wait

step "Altinity ClickHouse operator $ALTINITY_OPERATOR_VERSION"
# The bundle installs into kube-system and watches every namespace.
kubectl apply -f "https://raw.githubusercontent.com/Altinity/clickhouse-operator/release-$ALTINITY_OPERATOR_VERSION/deploy/operator/clickhouse-operator-install-bundle.yaml"
kubectl rollout status deployment/clickhouse-operator --namespace kube-system --timeout=5m

step "ECK $ECK_VERSION"
kubectl apply --server-side -f "https://download.elastic.co/downloads/eck/$ECK_VERSION/crds.yaml"
kubectl apply -f "https://download.elastic.co/downloads/eck/$ECK_VERSION/operator.yaml"
kubectl rollout status statefulset/elastic-operator --namespace elastic-system --timeout=5m
