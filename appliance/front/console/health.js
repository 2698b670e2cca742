export function init(ctx) {}
export function show(ctx) {}
export function hide(ctx) {}
