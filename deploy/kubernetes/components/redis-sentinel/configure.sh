#!/bin/sh
# Writes this pod's redis.conf and sentinel.conf into /run/redis (an emptyDir).
# The master is the one the other pods' sentinels already know; on the very first start, when no
# sentinel answers, pod 0 is the master. Names, not IPs, are announced: a pod keeps its name (not
# its IP) across restarts. The pods are <statefulset>-0..2 under the headless Service
# $REDIS_HEADLESS (default redis-headless, the kustomize component's; the Helm chart sets its own).
set -eu
HEADLESS="${REDIS_HEADLESS:-redis-headless}"
STATEFULSET="$(hostname | sed 's/-[0-9]*$//')"
SELF="$(hostname).$HEADLESS"
MASTER=""
for i in 0 1 2; do
  PEER="$STATEFULSET-$i.$HEADLESS"
  [ "$PEER" = "$SELF" ] && continue
  MASTER="$(redis-cli -h "$PEER" -p 26379 --raw SENTINEL get-master-addr-by-name mymaster 2>/dev/null | head -n 1 || true)"
  [ -n "$MASTER" ] && break
done
[ -n "$MASTER" ] || MASTER="$STATEFULSET-0.$HEADLESS"

cat > /run/redis/redis.conf <<CONF
port 6379
dir /data
appendonly yes
appendfsync everysec
maxmemory-policy noeviction
replica-announce-ip $SELF
# A master cut off from every replica stops taking writes after 10 s, so a failed-over master
# that is still alive cannot keep accepting state that would be thrown away.
min-replicas-to-write 1
min-replicas-max-lag 10
CONF
if [ "$MASTER" != "$SELF" ]; then
  echo "replicaof $MASTER 6379" >> /run/redis/redis.conf
fi

cat > /run/redis/sentinel.conf <<CONF
port 26379
dir /run/redis
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $SELF
sentinel monitor mymaster $MASTER 6379 2
sentinel down-after-milliseconds mymaster 5000
sentinel failover-timeout mymaster 30000
sentinel parallel-syncs mymaster 1
CONF
