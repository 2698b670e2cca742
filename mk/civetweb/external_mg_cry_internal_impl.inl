/* CivetWeb built with NO_FILESYSTEMS (mk/civetweb.sh) needs its error reporter from us.
 * The same as CivetWeb's own without the error_log_file (never set by the appliance):
 * the message goes to the log_message callback; with no connection, to stdout. */
static void mg_cry_internal_impl(const struct mg_connection *conn, const char *func,
                                 unsigned line, const char *fmt, va_list ap)
{
    char buf[MG_BUF_LEN];
    (void)func;
    (void)line;
#if defined(GCC_DIAGNOSTIC)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
#endif
    IGNORE_UNUSED_RESULT(vsnprintf_impl(buf, sizeof(buf), fmt, ap));
#if defined(GCC_DIAGNOSTIC)
#pragma GCC diagnostic pop
#endif
    buf[sizeof(buf) - 1] = 0;
    if (!conn) {
        puts(buf);
        return;
    }
    if (conn->phys_ctx->callbacks.log_message != NULL)
        (void)conn->phys_ctx->callbacks.log_message(conn, buf);
}
