/** The part of haraka-net-utils (which ships no types) the plugin uses. */
declare module 'haraka-net-utils' {
  /** RFC 1918, loopback, link-local, IPv6 unique-local and the documentation networks. */
  export function is_private_ip(ip: string): boolean
}
