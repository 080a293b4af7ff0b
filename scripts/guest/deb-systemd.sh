#!/bin/bash
# ferry's Debian package on a system run by systemd (the test guest booted
# with systemd as PID 1, run-guest.sh's FERRY_GUEST_INIT=systemd): the
# package installs; Debian's tgt.service starts tgtd, which loads the
# packaged bs_ferry.so; ferry-agent.service, configured in
# /etc/default/ferry, serves the map's LUN through it; open-iscsi reads
# and writes it; the agent killed with SIGKILL is restarted by systemd
# while the LUN keeps being served; stopping the unit stops only the
# agent (KillMode=process), not tgtd.
GUEST_LIO=0
. /share/lib.sh
# The packaged binary, not a staged one.
rm -f /usr/local/bin/ferry
[ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is $(cat /proc/1/comm), not systemd"

t=$(now)
must dpkg -i "$S/ferry.deb"
for f in /usr/bin/ferry /usr/bin/ferry-iscsi /usr/lib/tgt/backing-store/bs_ferry.so \
  /usr/lib/x86_64-linux-gnu/tcmu-runner/handler_ferry.so /etc/default/ferry \
  /usr/share/man/man1/ferry-agent.1.gz /usr/share/man/man1/ferry-volume-qos.1.gz; do
  [ -e "$f" ] || fail "the package did not install $f"
done
[ "$(command -v ferry)" = /usr/bin/ferry ] || fail "ferry is $(command -v ferry)"
[ "$(systemctl is-enabled ferry-agent 2>&1)" = disabled ] || fail "ferry-agent is not installed disabled"
log "package installed ($(since "$t") s): $(dpkg-query -W -f '${Package} ${Version}' ferry)"

t=$(now)
must systemctl start tgt
export FERRY_MAP=file:/var/lib/ferry/map
IQN=iqn.2026-11.org.ferry:pkg
ME=iqn.2026-11.org.ferry:guest
must ferry volume create /var/lib/ferry/v.img --size 32M
must ferry map node add gw --portal 127.0.0.1:3260
must ferry map target add "$IQN"
must ferry map lun add v --target "$IQN" --lun 1 --spec /var/lib/ferry/v.img
must ferry map initiator add "$ME" --lun v
sed -i 's/^FERRY_NODE=.*/FERRY_NODE=gw/' /etc/default/ferry
must systemctl enable --now ferry-agent
served() { tgtadm --lld iscsi --mode target --op show 2>/dev/null | grep -q 'Backing store type: ferry'; }
for _ in $(seq 1 240); do served && break; sleep 0.25; done
served || fail "the agent unit did not serve the LUN: $(journalctl -u ferry-agent --no-pager | tail -n 5)"
pid=$(systemctl show -p MainPID --value ferry-agent)
log "ferry-agent.service (pid $pid) serves the map's LUN through tgt.service ($(since "$t") s)"

echo "InitiatorName=$ME" >/etc/iscsi/initiatorname.iscsi
must systemctl start iscsid
must iscsiadm -m discovery -t st -p 127.0.0.1:3260
must iscsiadm -m node -T "$IQN" -p 127.0.0.1:3260 --login
DEV=$(disk_of_size $((32 * MiB))) || fail "no 32 MiB disk after logging in"
head -c 1M /dev/urandom >/tmp/chunk
must dd if=/tmp/chunk of="$DEV" bs=1M oflag=direct conv=fsync
cmp <(head -c 1M /var/lib/ferry/v.img) /tmp/chunk || fail "the volume lacks the write"

# SIGKILL: systemd restarts the agent; tgtd serves on meanwhile.
t=$(now)
must systemctl kill -s KILL ferry-agent
restarted() {
  local p
  p=$(systemctl show -p MainPID --value ferry-agent)
  [ -n "$p" ] && [ "$p" != 0 ] && [ "$p" != "$pid" ] && [ "$(systemctl is-active ferry-agent)" = active ]
}
for _ in $(seq 1 120); do restarted && break; sleep 0.25; done
restarted || fail "systemd did not restart the killed agent: $(systemctl status ferry-agent --no-pager | tail -n 5)"
n=$(systemctl show -p NRestarts --value ferry-agent)
[ "$n" -ge 1 ] || fail "NRestarts is $n"
cmp <(dd if="$DEV" bs=1M count=1 iflag=direct 2>/dev/null) /tmp/chunk || fail "read back differs after the agent's restart"
head -c 1M /dev/urandom >/tmp/chunk2
must dd if=/tmp/chunk2 of="$DEV" bs=1M seek=1 oflag=direct conv=fsync
log "agent killed: restarted by systemd as pid $(systemctl show -p MainPID --value ferry-agent) (NRestarts=$n) in $(since "$t") s; the LUN served throughout"

# Stopping the unit stops the agent alone.
must systemctl stop ferry-agent
cmp <(dd if="$DEV" bs=1M skip=1 count=1 iflag=direct 2>/dev/null) /tmp/chunk2 ||
  fail "the LUN stopped serving with the agent"
must iscsiadm -m node -T "$IQN" -p 127.0.0.1:3260 --logout
log "the agent's stop left tgtd serving"
log "all checks passed"
echo ok >"$S/result"
