#!/bin/sh
# Init step of the compose file: write mosquitto's password file from the environment
# (MQTT_USERNAME, MQTT_PASSWORD, taken from .env), readable by the broker only.
# Usage: make-passwd.sh [DIR]   (default /mosquitto/auth)
set -eu
dir="${1:-/mosquitto/auth}"
: "${MQTT_USERNAME:?MQTT_USERNAME is not set (copy .env.example to .env)}"
: "${MQTT_PASSWORD:?MQTT_PASSWORD is not set (copy .env.example to .env)}"
mkdir -p "$dir"
umask 077
mosquitto_passwd -c -b "$dir/passwd" "$MQTT_USERNAME" "$MQTT_PASSWORD"
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
  chown mosquitto:mosquitto "$dir/passwd"
fi
chmod 0600 "$dir/passwd"
echo "mosquitto password file written for user $MQTT_USERNAME"
