#!/bin/sh
# Init step of the compose file: write mosquitto's password file and ACL from the
# environment (MQTT_USERNAME, MQTT_PASSWORD, taken from .env), readable by the broker only.
# Usage: make-passwd.sh [DIR]   (default /mosquitto/auth); the ACL template is read from
# the directory of this script.
set -eu
dir="${1:-/mosquitto/auth}"
: "${MQTT_USERNAME:?MQTT_USERNAME is not set (copy .env.example to .env)}"
: "${MQTT_PASSWORD:?MQTT_PASSWORD is not set (copy .env.example to .env)}"
mkdir -p "$dir"
umask 077
case "$MQTT_USERNAME" in
  *[!A-Za-z0-9_.-]*) echo "MQTT_USERNAME may hold only letters, digits, _ . -" >&2; exit 1 ;;
esac
mosquitto_passwd -c -b "$dir/passwd" "$MQTT_USERNAME" "$MQTT_PASSWORD"
sed "s/@MQTT_USERNAME@/$MQTT_USERNAME/" "$(dirname "$0")/acl.template" > "$dir/acl"
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
  chown mosquitto:mosquitto "$dir/passwd" "$dir/acl"
fi
chmod 0600 "$dir/passwd" "$dir/acl"
echo "mosquitto password file written for user $MQTT_USERNAME"
