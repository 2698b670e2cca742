/* CivetWeb built with NO_FILESYSTEMS (mk/civetweb.sh) needs its access logger from us. The
 * appliance writes its own request log (log_requests, jlog.h) and sets neither CivetWeb's
 * access_log_file nor its log_access callback: nothing to do. */
static void log_access(const struct mg_connection *conn)
{
    (void)conn;
}
